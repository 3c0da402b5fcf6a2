//! The sending side of a relay: keys supplied to a master SAE, and every hop that passes
//! them on (split over its next hops, one-time padded, authenticated).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use tracing::Instrument;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::error::RelayError;
use super::messages::{
    b64, RelayAck, RelayBody, RelayEnvelope, RelayedKey, MAX_HOPS, RELAY_VERSION,
};
use crate::km::agent::Agent;
use crate::km::kma::otp;
use crate::km::kma::reserve::{
    self,
    plan::{Hop, Part, Plan},
};
use crate::km::kxi::send::send_ext_keys;
use crate::km::store::Block;

/// A key issued to a master SAE.
pub struct IssuedKey {
    pub key_id: Uuid,
    pub key: Zeroizing<Vec<u8>>,
}

/// Supplies `number` keys of `size` bits shared by `master` (an SAE of this KM) with every
/// SAE in `slaves`: relays them to the KMs of remote slaves and records them for local ones.
pub async fn supply(
    agent: &Arc<Agent>,
    master: &str,
    slaves: &[String],
    number: u32,
    size: u32,
) -> Result<Vec<IssuedKey>, RelayError> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for slave in slaves {
        let node = agent
            .sae_node(slave)
            .ok_or_else(|| RelayError::Rejected(format!("unknown SAE {slave}")))?;
        groups
            .entry(node.to_owned())
            .or_default()
            .push(slave.clone());
    }
    let local = groups.remove(&agent.config.node);
    if let Some(local) = &local {
        crate::km::ksa::expiry::check_room(agent, local, master, number as usize).await?;
    }
    // keys made here use no link, but their QoS class's quota holds
    let local_turn = match &local {
        Some(local) => {
            let bits = u64::from(number) * u64::from(size);
            crate::km::qos::reserve_turn(agent, None, master, local, bits, Default::default())
                .await?
        }
        None => None,
    };
    // UUIDv7: the time of issue travels with each key ID, so every KM accounts a key in
    // the same period (crate::km::accounting::summary)
    let key_ids: Vec<Uuid> = (0..number).map(|_| Uuid::now_v7()).collect();
    // every path is reserved before any key is made: a relay that cannot arrive costs nothing
    let mut relays = Vec::with_capacity(groups.len());
    for (dest, group) in groups {
        let hop = Hop {
            relay_id: Uuid::new_v4(),
            origin_km: agent.config.node.clone(),
            dest_km: dest,
            master_sae: master.to_owned(),
            slave_saes: group,
            key_size: size,
            hops_left: MAX_HOPS,
            extension_optional: None,
            iwn_km: None,
        };
        let span = tracing::info_span!("relay", relay_id = %hop.relay_id, origin = %hop.origin_km, dest = %hop.dest_km, keys = number, step = "reserve");
        let plan = reserve::prepare(agent, &hop, number as usize, None)
            .instrument(span)
            .await
            .inspect_err(|error| relay_failed(agent, &hop, error))?;
        crate::audit::hooks::relay_started(
            &agent.audit,
            hop.relay_id,
            &hop.dest_km,
            master,
            &hop.slave_saes,
            &key_ids,
        );
        relays.push((hop, plan));
    }
    let mut keys: Option<Vec<Zeroizing<Vec<u8>>>> = None;
    for (hop, plan) in relays {
        let span = tracing::info_span!("relay", relay_id = %hop.relay_id, origin = %hop.origin_km, dest = %hop.dest_km, keys = number);
        let made = async {
            let (made, ack) = send_split(
                agent,
                hop.clone(),
                &key_ids,
                keys.as_deref(),
                Vec::new(),
                plan,
            )
            .await?;
            tracing::info!(hops = ack.hops, "keys relayed");
            crate::audit::hooks::relay_finished(&agent.audit, hop.relay_id, &hop.dest_km, ack.hops);
            agent.metrics.relay("origin", true);
            Ok::<_, RelayError>(made)
        }
        .instrument(span)
        .await
        .inspect_err(|error| relay_failed(agent, &hop, error))?;
        keys.get_or_insert(made);
    }
    let keys = keys.unwrap_or_else(|| {
        key_ids
            .iter()
            .map(|_| {
                let mut key = Zeroizing::new(vec![0u8; size as usize / 8]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key[..]);
                key
            })
            .collect()
    });
    if let Some(local) = local {
        let entries: Vec<(Uuid, Zeroizing<Vec<u8>>)> =
            key_ids.iter().copied().zip(keys.iter().cloned()).collect();
        let master = master.to_owned();
        let terms = crate::km::ksa::expiry::terms(agent);
        let (slaves, owner) = (local.clone(), master.clone());
        agent
            .store
            .run(move |s| s.write(|txn| txn.insert_deliveries(&local, &master, &entries, terms)))
            .await?;
        crate::km::accounting::received(agent, &owner, &slaves, size, &key_ids).await;
        if let Some(turn) = local_turn {
            turn.served();
        }
    }
    Ok(key_ids
        .into_iter()
        .zip(keys)
        .map(|(key_id, key)| IssuedKey { key_id, key })
        .collect())
}

/// Reports a relay that failed at this KM (to operators and the KM lifecycle manager).
fn relay_failed(agent: &Agent, hop: &Hop, error: &RelayError) {
    agent.metrics.relay("origin", false);
    agent.emit(crate::km::events::Event::RelayFailure {
        relay_id: hop.relay_id,
        destination: hop.dest_km.clone(),
        reason: error.to_string(),
        exhausted: error.is_exhaustion(),
    })
}

/// Relays keys toward `hop.dest_km` over the next hops of `plan`, each carrying its share
/// of the keys with the blocks reserved for it (multipath); returns the keys made (when
/// `keys` is `None`), in order, and the combined acknowledgement. The incoming blocks
/// `consumed_in` are removed with the first part.
pub(super) async fn send_split(
    agent: &Arc<Agent>,
    hop: Hop,
    key_ids: &[Uuid],
    keys: Option<&[Zeroizing<Vec<u8>>]>,
    consumed_in: Vec<(String, u8, Vec<u64>)>,
    plan: Plan,
) -> Result<(Vec<Zeroizing<Vec<u8>>>, RelayAck), RelayError> {
    let paths = plan.parts.len();
    let mut parts = plan.parts.into_iter();
    let first = parts
        .next()
        .ok_or_else(|| RelayError::NoRoute(hop.dest_km.clone()))?;
    let part_keys = |range: &std::ops::Range<usize>| keys.map(|k| &k[range.clone()]);
    let range = first.keys.clone();
    let (mut made, mut ack) = send_hop(
        agent,
        first,
        hop.clone(),
        &key_ids[range.clone()],
        part_keys(&range),
        consumed_in,
    )
    .await?;
    let others = futures::future::join_all(parts.map(|part| {
        let range = part.keys.clone();
        send_hop(
            agent,
            part,
            hop.clone(),
            &key_ids[range.clone()],
            part_keys(&range),
            Vec::new(),
        )
    }))
    .await;
    for result in others {
        let (more, other) = result?;
        made.extend(more);
        ack.delivered += other.delivered;
        ack.hops = ack.hops.max(other.hops);
    }
    if paths > 1 {
        tracing::info!(paths, "keys split over several next hops");
    }
    Ok((made, ack))
}

/// Takes the blocks reserved for `part`, protects `keys` (or makes them from the blocks when
/// `keys` is `None`), sends the hop and waits for the acknowledgement. `consumed_in` are the
/// peer blocks of the incoming hop, removed in the same transaction.
async fn send_hop(
    agent: &Arc<Agent>,
    part: Part,
    hop: Hop,
    key_ids: &[Uuid],
    keys: Option<&[Zeroizing<Vec<u8>>]>,
    consumed_in: Vec<(String, u8, Vec<u64>)>,
) -> Result<(Vec<Zeroizing<Vec<u8>>>, RelayAck), RelayError> {
    let relay_id = hop.relay_id;
    let per_key = otp::blocks_per_key(hop.key_size);
    let Part {
        link, reservation, ..
    } = part;
    let link = &link;
    if !link.kind.is_qkd() {
        // Kxi-1' over an IWN's transfer link: no pads, nothing reserved
        drop(reservation);
        return crate::km::kxi::transfer::send(agent, link, hop, key_ids, keys, consumed_in).await;
    }
    let wanted = reservation.len();
    if wanted != key_ids.len() * per_key + 1 {
        return Err(RelayError::Rejected(
            "the reservation does not match the keys".into(),
        ));
    }
    let counted: Vec<(String, usize)> = consumed_in
        .iter()
        .map(|(l, _, seqs)| (l.clone(), seqs.len()))
        .collect();
    let mut taken = agent
        .store
        .run(move |s| {
            s.write(|txn| {
                for (link, owner, seqs) in &consumed_in {
                    txn.remove_peer_blocks(link, *owner, seqs)?;
                }
                txn.take_reserved(&reservation)
            })
        })
        .await?;
    agent.count_consumed(&link.id, wanted);
    for (link, blocks) in counted {
        agent.count_consumed(&link, blocks);
    }
    let (mac_seq, mac_key) = taken.pop().expect("at least the MAC block");
    let mut made = Vec::with_capacity(key_ids.len());
    let mut relayed = Vec::with_capacity(key_ids.len());
    for (i, (key_id, chunk)) in key_ids.iter().zip(taken.chunks(per_key)).enumerate() {
        let pad_blocks: Vec<Block> = chunk.iter().map(|(_, b)| b.clone()).collect();
        let pad = otp::key_from_blocks(&pad_blocks, hop.key_size);
        let ciphertext = keys.map(|keys| b64().encode(&otp::xor_pad(&keys[i], &pad)[..]));
        if keys.is_none() {
            made.push(pad);
        }
        relayed.push(RelayedKey {
            key_id: *key_id,
            pad: chunk.iter().map(|(seq, _)| *seq).collect(),
            ciphertext,
        });
    }
    let body = RelayBody {
        version: RELAY_VERSION,
        relay_id: hop.relay_id,
        link: link.id.clone(),
        origin_km: hop.origin_km,
        dest_km: hop.dest_km,
        master_sae: hop.master_sae,
        slave_saes: hop.slave_saes,
        key_size: hop.key_size,
        hops_left: hop.hops_left,
        keys: relayed,
        extension_optional: hop.extension_optional,
        iwn_km: hop.iwn_km,
    };
    if link.peer_domain.is_some() {
        let ack = send_ext_keys(agent, link, &body, mac_seq, &mac_key).await?;
        return Ok((made, ack));
    }
    let body = serde_json::to_string(&body).map_err(|e| RelayError::Rejected(e.to_string()))?;
    let envelope = RelayEnvelope {
        tag: b64().encode(otp::tag(&mac_key, body.as_bytes())),
        body,
        mac_seq,
    };
    let response = agent
        .peers
        .post(format!("{}/kma/v1/relay", link.peer_kma))
        .json(&envelope)
        .send()
        .await
        .map_err(|source| RelayError::Unreachable {
            node: link.peer.clone(),
            source,
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        let message = response.text().await.unwrap_or_default();
        return Err(RelayError::Peer {
            node: link.peer.clone(),
            status,
            message,
        });
    }
    let ack: RelayAck = response
        .json()
        .await
        .map_err(|source| RelayError::Unreachable {
            node: link.peer.clone(),
            source,
        })?;
    if ack.relay_id != relay_id || ack.delivered != key_ids.len() {
        return Err(RelayError::Peer {
            node: link.peer.clone(),
            status: 200,
            message: "the acknowledgement does not match the relay".into(),
        });
    }
    Ok((made, ack))
}
