//! Withdrawal of keys an interworking node brought into this QKDN, when their transfer is
//! voided (Kxi-2', [`crate::km::kxi::settle`]): the IWN's KM asks its next hop, which passes
//! the request on toward the destination KM (`POST /kma/v1/withdraw`, mutual TLS inside
//! the domain). The destination KM takes the keys back from their slave SAEs only when the
//! caller is a hop the keys came from.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::store::Withdrawn;

/// How long a hop waits for the rest of the path to withdraw.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Withdraw the keys of relay `relay_id` delivered at `dest_km`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    pub relay_id: Uuid,
    pub dest_km: String,
    pub key_ids: Vec<Uuid>,
    /// Hops the request may still take.
    pub hops_left: u8,
}

/// What became of each key the destination knew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithdrawAnswer {
    pub outcomes: Vec<(Uuid, Withdrawn)>,
}

/// Why a withdrawal was refused: the status to answer and a message.
pub type Refusal = (u16, String);

/// Asks the peer across `link` to withdraw (or pass the request on).
pub async fn ask(
    agent: &Agent,
    link: &LinkConfig,
    request: &WithdrawRequest,
) -> Result<WithdrawAnswer, String> {
    let response = agent
        .client_for(link)
        .post(format!("{}/kma/v1/withdraw", link.peer_kma))
        .timeout(WITHDRAW_TIMEOUT)
        .json(request)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", link.peer))?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!(
            "{} answered {status}: {}",
            link.peer,
            response.text().await.unwrap_or_default()
        ));
    }
    response
        .json()
        .await
        .map_err(|e| format!("{}: {e}", link.peer))
}

/// Handles a withdrawal from peer KM `sender` of this domain.
pub async fn receive(
    agent: &Arc<Agent>,
    sender: &str,
    request: WithdrawRequest,
) -> Result<WithdrawAnswer, Refusal> {
    // only a KM of this domain on a link of this one
    if !agent
        .config
        .links
        .iter()
        .any(|l| l.peer_domain.is_none() && l.peer == sender)
    {
        return Err((403, "not a peer KM of this domain".into()));
    }
    if request.key_ids.len() > crate::km::kma::relay::messages::MAX_KEYS_PER_MESSAGE {
        return Err((400, "too many keys".into()));
    }
    if request.dest_km == agent.config.node {
        let (relay, caller, ids) = (request.relay_id, sender.to_owned(), request.key_ids);
        let outcome = agent
            .store
            .run(move |s| {
                let now = crate::km::store::deliveries_now_ms();
                s.write(|t| t.withdraw(relay, &caller, &ids, now))
            })
            .await
            .map_err(|e| (500, e.to_string()))?;
        return match outcome {
            Some(outcomes) => {
                tracing::info!(relay_id = %relay, withdrawn = outcomes.len(), "keys of a voided transfer withdrawn");
                Ok(WithdrawAnswer { outcomes })
            }
            None => {
                tracing::warn!(relay_id = %relay, %sender, "withdrawal by a KM the keys did not come from");
                Err((403, "the keys did not come through the caller".into()))
            }
        };
    }
    if request.hops_left == 0 {
        return Err((400, "hop limit reached".into()));
    }
    let onward = WithdrawRequest {
        hops_left: request.hops_left - 1,
        ..request
    };
    let mut errors = Vec::new();
    for (link, _) in agent.next_hops(&onward.dest_km) {
        if link.peer == sender || link.peer_domain.is_some() {
            continue;
        }
        match ask(agent, &link, &onward).await {
            Ok(answer) => return Ok(answer),
            Err(error) => errors.push(error),
        }
    }
    Err((502, format!("no next hop withdrew: {}", errors.join("; "))))
}
