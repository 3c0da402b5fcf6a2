//! Path reservation before a key relay: no link key is spent on a relay that cannot arrive.
//!
//! A relay consumes link blocks hop by hop, and a block that has crossed a link (as a pad
//! reference, a ciphertext or a MAC) can never be used again. So before the first block is
//! consumed, the origin KM sets aside the blocks it needs on its next hops and asks each next
//! hop to do the same on the rest of the path, up to the destination KM, which checks that it
//! serves the slave SAEs. Only when the whole path has answered does the relay start, and
//! every hop then consumes exactly the blocks it set aside, split over its next hops as
//! decided at reservation. A failure anywhere during reservation releases every block on the
//! path: nothing is consumed.
//!
//! Reservations live in memory ([`crate::km::store::Reservation`]): a KM that crashes returns
//! them to its pool, and a hold that no relay claims is dropped after
//! [`HOLD_FOR`](plan::HOLD_FOR).

pub mod plan;

use plan::{Hop, Part, Plan};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::km::agent::Agent;
use crate::km::kma::otp;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::{MAX_KEYS_PER_MESSAGE, MAX_RELAY_KEY_BITS, RELAY_VERSION};

/// How long a KM waits for its next hop to answer a reservation (covers the waits of the
/// hops behind it).
pub const RESERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the origin KM waits for its first hops to bring the blocks of a request: while
/// a link is momentarily empty, requests queue for key rather than fail.
pub const ORIGIN_WAIT: Duration = Duration::from_secs(2);
/// How long a further hop waits for the blocks of a reservation.
pub const HOP_WAIT: Duration = Duration::from_millis(500);

/// Asks the next hop to set aside the blocks of one relay on the rest of its path
/// (`POST /kma/v1/reserve`, mutual TLS: the caller must be the peer of `link`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    pub version: u32,
    pub relay_id: Uuid,
    /// The link between the caller and the receiver.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    /// Key size in bits.
    pub key_size: u32,
    /// Number of keys the relay will carry over `link`.
    pub keys: usize,
    /// Hops the relay may still take after the receiver.
    pub hops_left: u8,
}

/// Splits `n` keys over next hops in proportion to `weights` (largest remainder).
pub fn split_counts(n: usize, weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return weights.iter().map(|_| 0).collect();
    }
    let exact: Vec<(usize, u64)> = weights
        .iter()
        .map(|w| {
            let share = n as u64 * u64::from(*w);
            ((share / total) as usize, share % total)
        })
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|(c, _)| *c).collect();
    let mut left = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// Plans the relay of `n` keys from this KM toward `hop.dest_km`: splits them over the next
/// hops by their weights, sets aside this KM's blocks for each part and has every next hop
/// reserve the rest of its path. `sender` is the previous hop (a route back to it is a loop).
pub async fn prepare(
    agent: &Arc<Agent>,
    hop: &Hop,
    n: usize,
    sender: Option<&str>,
) -> Result<Plan, RelayError> {
    let hops = agent.next_hops(&hop.dest_km);
    if hops.is_empty() {
        return Err(RelayError::NoRoute(hop.dest_km.clone()));
    }
    if let Some(sender) = sender {
        if hops.iter().any(|(l, _)| l.peer_identity() == sender) {
            return Err(RelayError::Rejected(
                "the route loops back to the sender".into(),
            ));
        }
    }
    let per_key = otp::blocks_per_key(hop.key_size);
    let weights: Vec<u32> = hops.iter().map(|(_, w)| *w).collect();
    let mut parts = Vec::new();
    let mut start = 0;
    for ((link, _), count) in hops.into_iter().zip(split_counts(n, &weights)) {
        if count == 0 {
            continue;
        }
        let wait = if sender.is_some() {
            HOP_WAIT
        } else {
            ORIGIN_WAIT
        };
        // a transfer link has no key pool: nothing to reserve on it (the IWN's other KM
        // still reserves the rest of the path)
        let blocks = if link.kind.is_qkd() {
            count * per_key + 1
        } else {
            0
        };
        // QoS: when classes are configured, the request waits for its class's turn on the
        // link first (and holds its quota); its blocks are then reserved within the same wait.
        // A transfer link (Kxi-1' to the other QKDN's KM of an interworking node) has no
        // pool, but its transfers take their class's turn on it all the same (the class of
        // the session's SAE pair, or of the peer domain of its slave SAEs).
        let deadline = tokio::time::Instant::now() + wait;
        let bits = count as u64 * u64::from(hop.key_size);
        let turn = crate::km::qos::reserve_turn(
            agent,
            Some(&link.id),
            &hop.master_sae,
            &hop.slave_saes,
            bits,
            wait,
        )
        .await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reservation = agent
            .store
            .reserve_within(&link.id, link.end.owner(), blocks, left)
            .await?;
        if let Some(turn) = turn {
            turn.served();
        }
        parts.push(Part {
            link,
            keys: start..start + count,
            reservation,
        });
        start += count;
    }
    let asked = parts.iter().map(|part| ask_next_hop(agent, hop, part));
    for result in futures::future::join_all(asked).await {
        result?;
    }
    Ok(Plan { parts })
}

/// Asks the peer across `part.link` to reserve the rest of the path.
async fn ask_next_hop(agent: &Agent, hop: &Hop, part: &Part) -> Result<(), RelayError> {
    let link = &part.link;
    let request = ReserveRequest {
        version: RELAY_VERSION,
        relay_id: hop.relay_id,
        link: link.id.clone(),
        origin_km: hop.origin_km.clone(),
        dest_km: hop.dest_km.clone(),
        master_sae: hop.master_sae.clone(),
        slave_saes: hop.slave_saes.clone(),
        key_size: hop.key_size,
        keys: part.keys.len(),
        hops_left: hop.hops_left,
    };
    let response = agent
        .client_for(link)
        .post(format!("{}/kma/v1/reserve", link.peer_kma))
        .timeout(RESERVE_TIMEOUT)
        .json(&request)
        .send()
        .await
        .map_err(|source| RelayError::Unreachable {
            node: link.peer.clone(),
            source,
        })?;
    let status = response.status().as_u16();
    if status == 204 || status == 200 {
        return Ok(());
    }
    Err(RelayError::Peer {
        node: link.peer.clone(),
        status,
        message: response.text().await.unwrap_or_default(),
    })
}

/// Handles a reservation from peer KM `sender`: checks the request as a relay message would
/// be checked, then reserves this KM's part of the path and holds it for the relay.
pub async fn receive(
    agent: &Arc<Agent>,
    sender: &str,
    request: ReserveRequest,
) -> Result<(), RelayError> {
    let reject = |m: &str| Err(RelayError::Rejected(m.to_owned()));
    if request.version != RELAY_VERSION {
        return reject("unsupported relay version");
    }
    let Some(link) = agent
        .link_config(&request.link)
        .filter(|l| l.peer_identity() == sender)
    else {
        tracing::warn!(%sender, link = %request.link, "reservation from a KM that is not the link's peer");
        return reject("the sender is not the peer of the named link");
    };
    if request.key_size == 0
        || !request.key_size.is_multiple_of(8)
        || request.key_size > MAX_RELAY_KEY_BITS
    {
        return reject("key size must be a positive multiple of 8");
    }
    if request.keys == 0 || request.keys > MAX_KEYS_PER_MESSAGE {
        return reject("bad number of keys");
    }
    // in a distributed QKDN, a new interworking session's SAE may reach this node's link
    // state a moment after the reservation: wait for it briefly
    let (master, origin) = (request.master_sae.clone(), request.origin_km.clone());
    let served = agent
        .learned(Duration::from_secs(2), |a| {
            a.sae_node(&master).as_deref() == Some(origin.as_str())
        })
        .await;
    if !served {
        return reject("the master SAE is not served by the origin KM");
    }
    if link.peer_domain.is_some() && agent.sae_domain(&request.master_sae) != link.peer_domain {
        return reject("the master SAE is not an SAE of the peer QKDN");
    }
    if request.dest_km == agent.config.node {
        if request.slave_saes.iter().any(|s| !agent.is_local_sae(s)) {
            return reject("a slave SAE is not served by the destination KM");
        }
        return crate::km::ksa::expiry::check_room(
            agent,
            &request.slave_saes,
            &request.master_sae,
            request.keys,
        )
        .await;
    }
    if request.hops_left == 0 {
        return reject("hop limit reached");
    }
    let hop = Hop {
        relay_id: request.relay_id,
        origin_km: request.origin_km,
        dest_km: request.dest_km,
        master_sae: request.master_sae,
        slave_saes: request.slave_saes,
        key_size: request.key_size,
        hops_left: request.hops_left - 1,
        extension_optional: None,
        iwn_km: None,
    };
    let plan = prepare(agent, &hop, request.keys, Some(sender)).await?;
    agent.holds.hold(hop.relay_id, plan);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_counts;
    use proptest::prelude::*;

    #[test]
    fn keys_split_by_weight() {
        assert_eq!(split_counts(10, &[1]), vec![10]);
        assert_eq!(split_counts(10, &[1, 1]), vec![5, 5]);
        assert_eq!(split_counts(10, &[150, 200]), vec![4, 6]);
        assert_eq!(split_counts(1, &[1, 1]), vec![1, 0]);
    }

    proptest! {
        #[test]
        fn every_key_goes_exactly_once(n in 0usize..2000, weights in proptest::collection::vec(1u32..1000, 1..6)) {
            let counts = split_counts(n, &weights);
            prop_assert_eq!(counts.iter().sum::<usize>(), n);
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            for (c, w) in counts.iter().zip(&weights) {
                let ideal = n as f64 * f64::from(*w) / total as f64;
                prop_assert!((*c as f64 - ideal).abs() < 1.0 + 1e-9);
            }
        }
    }
}
