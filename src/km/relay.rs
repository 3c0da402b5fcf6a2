//! Key relay between KMs (the KMA's hop-by-hop relay inside a domain).
//!
//! The KM of the master SAE makes the keys from its own blocks of the first hop's link key
//! pool: the peer holds the same blocks, so the first hop only names them. Every further hop
//! re-encrypts the keys with a one-time pad from its own link. Every hop message is
//! authenticated with a one-time MAC keyed by one more link block, on top of mutual TLS.
//! Before anything is consumed, the whole path reserves the blocks it needs
//! ([`super::reserve`]), so a relay that cannot arrive costs no link key. Blocks are removed
//! from the store before anything is sent, so no block is used twice, whatever fails
//! afterwards. The destination KM stores the keys for the slave SAEs before it
//! acknowledges; the master SAE gets its keys only after that acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::agent::Agent;
use super::config::LinkConfig;
use super::otp;
use super::reserve::{self, Hop, Part, Plan};
use super::store::{Block, StoreError};

/// Version of the relay message format.
pub const RELAY_VERSION: u32 = 1;
/// Most hops a relayed key may take.
pub const MAX_HOPS: u8 = 32;
/// Most keys in one relay message.
pub const MAX_KEYS_PER_MESSAGE: usize = 1024;
/// Largest key size accepted on the KMA link, in bits.
pub const MAX_RELAY_KEY_BITS: u32 = 65_536;

/// A relay hop message: the body (JSON text) exactly as authenticated, and its MAC.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayEnvelope {
    /// [`RelayBody`] as JSON text; the MAC covers these bytes.
    pub body: String,
    /// Number of the link block (owned by the sender) keying the one-time MAC.
    pub mac_seq: u64,
    /// One-time MAC tag, Base64.
    pub tag: String,
}

/// What one hop says to the next.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayBody {
    pub version: u32,
    pub relay_id: Uuid,
    /// The link this hop crosses.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    /// Key size in bits.
    pub key_size: u32,
    pub hops_left: u8,
    pub keys: Vec<RelayedKey>,
}

/// One key on one hop.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayedKey {
    pub key_id: Uuid,
    /// Numbers of the sender's link blocks used for this key.
    pub pad: Vec<u64>,
    /// The key XOR the pad, Base64; absent when the pad blocks *are* the key (first hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
}

/// The destination's acknowledgement, passed back hop by hop.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayAck {
    pub relay_id: Uuid,
    pub delivered: usize,
    /// Number of hops the keys travelled.
    pub hops: u32,
}

/// Why a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no relay route to node {0}")]
    NoRoute(String),
    #[error("not enough key material: {0}")]
    Exhausted(StoreError),
    #[error("relay message rejected: {0}")]
    Rejected(String),
    #[error("next hop {node} refused the relay (HTTP {status}): {message}")]
    Peer {
        node: String,
        status: u16,
        message: String,
    },
    #[error("next hop {node} unreachable: {source}")]
    Unreachable {
        node: String,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Store(StoreError),
    /// Too many keys already wait for a slave SAE (see [`super::expiry`]).
    #[error("{BACKLOG}: {0}")]
    Backlog(String),
}

/// How a backlog refusal begins, also in a peer's problem body.
const BACKLOG: &str = "too many undelivered keys";

impl RelayError {
    /// Whether the relay failed only because a link on its route (here or further on) holds
    /// too little key for now: not a route fault.
    pub fn is_exhaustion(&self) -> bool {
        match self {
            RelayError::Exhausted(_) | RelayError::Backlog(_) => true,
            // a further hop refused with this same error (its text leads the problem body)
            RelayError::Peer {
                status: 503,
                message,
                ..
            } => message.contains("not enough key material") || message.contains(BACKLOG),
            _ => false,
        }
    }
}

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exhausted { .. } => RelayError::Exhausted(e),
            StoreError::Backlog { .. } => RelayError::Backlog(e.to_string()),
            StoreError::MissingBlock { .. } | StoreError::WrongOwner { .. } => {
                RelayError::Rejected(e.to_string())
            }
            other => RelayError::Store(other),
        }
    }
}

/// A key issued to a master SAE.
pub struct IssuedKey {
    pub key_id: Uuid,
    pub key: Zeroizing<Vec<u8>>,
}

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
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
        super::expiry::check_room(agent, local, master, number as usize).await?;
    }
    let key_ids: Vec<Uuid> = (0..number).map(|_| Uuid::new_v4()).collect();
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
        };
        let span = tracing::info_span!("relay", relay_id = %hop.relay_id, origin = %hop.origin_km, dest = %hop.dest_km, keys = number, step = "reserve");
        let plan = reserve::prepare(agent, &hop, number as usize, None)
            .instrument(span)
            .await
            .inspect_err(|error| relay_failed(agent, &hop, error))?;
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
        let terms = super::expiry::terms(agent);
        agent
            .store
            .run(move |s| s.write(|txn| txn.insert_deliveries(&local, &master, &entries, terms)))
            .await?;
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
    agent.emit(super::events::Event::RelayFailure {
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
async fn send_split(
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
    };
    if link.peer_domain.is_some() {
        let ack = super::kxi::send_ext_keys(agent, link, &body, mac_seq, &mac_key).await?;
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
        let consumed_count = consumed[0].2.len();
        let entries: Vec<(Uuid, Zeroizing<Vec<u8>>)> = key_ids.iter().copied().zip(keys).collect();
        let terms = super::expiry::terms(agent);
        agent
            .store
            .run(move |s| {
                s.write(|txn| {
                    for (link, owner, seqs) in &consumed {
                        txn.remove_peer_blocks(link, *owner, seqs)?;
                    }
                    txn.insert_deliveries(&slaves, &master, &entries, terms)
                })
            })
            .await?;
        agent.count_consumed(&link.id, consumed_count);
        tracing::info!(keys = key_ids.len(), "keys delivered to destination KM");
        return Ok(RelayAck {
            relay_id: body.relay_id,
            delivered: key_ids.len(),
            hops: 1,
        });
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
    };
    // the path was reserved before the relay started; a relay that comes without (or after
    // its hold expired) reserves the rest of its path now
    let plan = match agent.holds.take(hop.relay_id, key_ids.len()) {
        Some(plan) => plan,
        None => reserve::prepare(agent, &hop, key_ids.len(), Some(sender)).await?,
    };
    let (_, ack) = send_split(agent, hop, &key_ids, Some(&keys), consumed, plan).await?;
    tracing::info!("keys forwarded");
    Ok(RelayAck {
        hops: ack.hops.saturating_add(1),
        ..ack
    })
}
