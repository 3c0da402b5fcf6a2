//! The receiving side of a relay: a hop message checked (link, sizes, blocks, MAC), then
//! its keys delivered here or forwarded.

use std::sync::Arc;

use base64::Engine;
use tracing::Instrument;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::error::RelayError;
use super::messages::{
    b64, RelayAck, RelayBody, RelayEnvelope, MAX_KEYS_PER_MESSAGE, MAX_RELAY_KEY_BITS,
    RELAY_VERSION,
};
use super::send::send_split;
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::kma::otp;
use crate::km::kma::reserve::{self, plan::Hop};
use crate::km::store::Block;

/// Handles a hop message from peer KM `sender`: verifies it, then delivers the keys (this KM
/// is the destination) or forwards them to the next hop.
pub async fn receive(
    agent: &Arc<Agent>,
    sender: &str,
    envelope: RelayEnvelope,
) -> Result<RelayAck, RelayError> {
    let body: RelayBody = serde_json::from_str(&envelope.body)
        .map_err(|e| RelayError::Rejected(format!("malformed relay body: {e}")))?;
    let span = tracing::info_span!("relay", relay_id = %body.relay_id, origin = %body.origin_km, dest = %body.dest_km, from = %sender);
    receive_body(agent, sender, &envelope, body)
        .instrument(span)
        .await
}

async fn receive_body(
    agent: &Arc<Agent>,
    sender: &str,
    envelope: &RelayEnvelope,
    body: RelayBody,
) -> Result<RelayAck, RelayError> {
    let verified = verify(agent, sender, envelope, &body, false).await?;
    act(agent, sender, verified, body).await
}

/// A relay message whose authentication succeeded: the link it came over and the blocks
/// it references (the pads, then the MAC block).
pub(crate) struct Verified {
    link: LinkConfig,
    owner: u8,
    seqs: Vec<u64>,
    pads: Vec<Block>,
    per_key: usize,
}

impl Verified {
    /// The link the message came over.
    pub(crate) fn link(&self) -> &LinkConfig {
        &self.link
    }
}

/// Checks a hop message from `sender` (over a Qx link when `over_qx`, else inside the
/// domain): the link, the sizes, the block references and the one-time MAC.
pub(crate) async fn verify(
    agent: &Arc<Agent>,
    sender: &str,
    envelope: &RelayEnvelope,
    body: &RelayBody,
    over_qx: bool,
) -> Result<Verified, RelayError> {
    let reject = |m: &str| Err(RelayError::Rejected(m.to_owned()));
    if body.version != RELAY_VERSION {
        return reject("unsupported relay version");
    }
    let Some(link) = agent
        .link_config(&body.link)
        .filter(|l| l.peer_identity() == sender && l.peer_domain.is_some() == over_qx)
        .cloned()
    else {
        tracing::warn!("relay message from a KM that is not this link's peer");
        return reject("the sender is not the peer of the named link");
    };
    if body.key_size == 0 || !body.key_size.is_multiple_of(8) || body.key_size > MAX_RELAY_KEY_BITS
    {
        return reject("key size must be a positive multiple of 8");
    }
    if body.keys.is_empty() || body.keys.len() > MAX_KEYS_PER_MESSAGE {
        return reject("bad number of keys");
    }
    let per_key = otp::blocks_per_key(body.key_size);
    let mut seqs: Vec<u64> = Vec::with_capacity(body.keys.len() * per_key + 1);
    for key in &body.keys {
        if key.pad.len() != per_key {
            return reject("pad length does not match the key size");
        }
        seqs.extend(&key.pad);
    }
    seqs.push(envelope.mac_seq);
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != seqs.len() {
        return reject("a link block is referenced twice");
    }
    let (link_id, owner) = (link.id.clone(), link.end.owner());
    let lookup = seqs.clone();
    let mut blocks = agent
        .store
        .run(move |s| s.peek_peer_blocks(&link_id, owner, &lookup))
        .await?;
    let mac_key = blocks.pop().expect("the MAC block");
    let tag = b64()
        .decode(&envelope.tag)
        .map_err(|_| RelayError::Rejected("tag is not Base64".into()))?;
    if !otp::verify(&mac_key, envelope.body.as_bytes(), &tag) {
        tracing::warn!("relay message failed authentication");
        return reject("message authentication failed");
    }
    Ok(Verified {
        link,
        owner,
        seqs,
        pads: blocks,
        per_key,
    })
}

/// Delivers or forwards the keys of a verified message. The sender has removed its copies
/// of the referenced blocks, so whatever happens this end does not keep them either.
pub(crate) async fn act(
    agent: &Arc<Agent>,
    sender: &str,
    verified: Verified,
    body: RelayBody,
) -> Result<RelayAck, RelayError> {
    let Verified {
        link,
        owner,
        seqs,
        pads,
        per_key,
    } = verified;
    let (link_id, incoming) = (link.id.clone(), seqs.clone());
    let step = if body.dest_km == agent.config.node {
        "deliver"
    } else {
        "forward"
    };
    let result = act_on_relay(agent, sender, &link, owner, seqs, &pads, per_key, body).await;
    agent.metrics.relay(step, result.is_ok());
    if result.is_err() {
        let discarded = agent
            .store
            .run(move |s| s.write(|txn| txn.discard_peer_blocks(&link_id, owner, &incoming)))
            .await;
        if let Err(error) = discarded {
            tracing::error!(%error, "cannot discard the blocks of a refused relay");
        }
    }
    result
}

/// Delivers or forwards the keys of an authenticated relay message.
#[allow(clippy::too_many_arguments)]
async fn act_on_relay(
    agent: &Arc<Agent>,
    sender: &str,
    link: &LinkConfig,
    owner: u8,
    seqs: Vec<u64>,
    pads: &[Block],
    per_key: usize,
    body: RelayBody,
) -> Result<RelayAck, RelayError> {
    let reject = |m: &str| Err(RelayError::Rejected(m.to_owned()));
    let mut keys = Vec::with_capacity(body.keys.len());
    for (key, pad_blocks) in body.keys.iter().zip(pads.chunks(per_key)) {
        let pad = otp::key_from_blocks(pad_blocks, body.key_size);
        keys.push(match &key.ciphertext {
            None => pad,
            Some(ct) => {
                let ct = Zeroizing::new(
                    b64()
                        .decode(ct)
                        .map_err(|_| RelayError::Rejected("ciphertext is not Base64".into()))?,
                );
                if ct.len() != pad.len() {
                    return reject("ciphertext length does not match the key size");
                }
                otp::xor_pad(&ct, &pad)
            }
        });
    }
    let consumed = vec![(link.id.clone(), owner, seqs)];
    deliver_or_forward(agent, sender, link, consumed, body, keys)
        .await
        .map(|(ack, _)| ack)
}

/// Delivers (this KM is the destination) or forwards keys that came over `link` from
/// `sender`, removing the incoming blocks `consumed` with the first effect; returns the
/// acknowledgement and the links of the next hops the keys took (none when delivered).
pub(crate) async fn deliver_or_forward(
    agent: &Arc<Agent>,
    sender: &str,
    link: &LinkConfig,
    consumed: Vec<(String, u8, Vec<u64>)>,
    body: RelayBody,
    keys: Vec<Zeroizing<Vec<u8>>>,
) -> Result<(RelayAck, Vec<String>), RelayError> {
    let reject = |m: &str| Err(RelayError::Rejected(m.to_owned()));
    let key_ids: Vec<Uuid> = body.keys.iter().map(|k| k.key_id).collect();
    if agent.sae_node(&body.master_sae).as_deref() != Some(body.origin_km.as_str()) {
        return reject("the master SAE is not served by the origin KM");
    }
    // keys entering from another QKDN must be for a master SAE of that QKDN, registered by
    // this domain's controller with the interworking route
    if link.peer_domain.is_some() && agent.sae_domain(&body.master_sae) != link.peer_domain {
        tracing::warn!(master = %body.master_sae, "keys over a Qx link for an SAE not of the peer QKDN");
        return reject("the master SAE is not an SAE of the peer QKDN");
    }
    if body.dest_km == agent.config.node {
        if body.slave_saes.iter().any(|s| !agent.is_local_sae(s)) {
            return reject("a slave SAE is not served by the destination KM");
        }
        let (slaves, master) = (body.slave_saes.clone(), body.master_sae.clone());
        let consumed_count: usize = consumed.iter().map(|c| c.2.len()).sum();
        // keys brought in by an IWN may be withdrawn (voided transfer) through this hop
        let withdrawable = body
            .iwn_km
            .as_ref()
            .map(|_| (body.relay_id, sender.to_owned(), key_ids.clone()));
        let entries: Vec<(Uuid, Zeroizing<Vec<u8>>)> = key_ids.iter().copied().zip(keys).collect();
        let terms = crate::km::ksa::expiry::terms(agent);
        agent
            .store
            .run(move |s| {
                s.write(|txn| {
                    for (link, owner, seqs) in &consumed {
                        txn.remove_peer_blocks(link, *owner, seqs)?;
                    }
                    txn.insert_deliveries(&slaves, &master, &entries, terms)?;
                    if let Some((relay, previous, ids)) = &withdrawable {
                        let now = crate::km::store::deliveries_now_ms();
                        txn.put_withdrawable(*relay, previous, ids, &slaves, now)?;
                    }
                    Ok(())
                })
            })
            .await?;
        agent.count_consumed(&link.id, consumed_count);
        crate::km::accounting::received(
            agent,
            &body.master_sae,
            &body.slave_saes,
            body.key_size,
            &key_ids,
        )
        .await;
        tracing::info!(keys = key_ids.len(), "keys delivered to destination KM");
        crate::audit::hooks::relay_arrived(
            &agent.audit,
            body.relay_id,
            &body.origin_km,
            sender,
            &body.master_sae,
            &body.slave_saes,
            body.key_size,
            &key_ids,
        );
        let ack = RelayAck {
            relay_id: body.relay_id,
            delivered: key_ids.len(),
            hops: 1,
        };
        return Ok((ack, Vec::new()));
    }
    if body.hops_left == 0 {
        return reject("hop limit reached");
    }
    let hop = Hop {
        relay_id: body.relay_id,
        origin_km: body.origin_km,
        dest_km: body.dest_km,
        master_sae: body.master_sae,
        slave_saes: body.slave_saes,
        key_size: body.key_size,
        hops_left: body.hops_left - 1,
        extension_optional: body.extension_optional,
        iwn_km: body.iwn_km,
    };
    // the path was reserved before the relay started; a relay that comes without (or after
    // its hold expired) reserves the rest of its path now
    let plan = match agent.holds.take(hop.relay_id, key_ids.len()) {
        Some(plan) => plan,
        None => reserve::prepare(agent, &hop, key_ids.len(), Some(sender)).await?,
    };
    let next_links: Vec<String> = plan.parts.iter().map(|p| p.link.id.clone()).collect();
    let (master, slaves, key_size) = (hop.master_sae.clone(), hop.slave_saes.clone(), hop.key_size);
    let (_, ack) = send_split(agent, hop, &key_ids, Some(&keys), consumed, plan).await?;
    crate::km::accounting::relayed(agent, &master, &slaves, key_size, &key_ids, &next_links).await;
    tracing::info!("keys forwarded");
    let ack = RelayAck {
        hops: ack.hops.saturating_add(1),
        ..ack
    };
    Ok((ack, next_links))
}
