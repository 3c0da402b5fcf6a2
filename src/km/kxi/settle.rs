//! Kxi-2' between the two KMs of an interworking node: where a transfer stands (asked by
//! KM-A when KM-B's acknowledgement does not come), voids (KM-A to KM-B, retried until KM-B
//! answers), and the withdrawal of voided keys from the destination KM in KM-B's QKDN. Both
//! sides are authenticated by the mutual TLS identity of the transfer link's peer.
//!
//! The state machine of one transfer (records in [`crate::km::store::TransferRecord`]):
//! - KM-A: `in-flight` -> `relayed` (acknowledged, or said so over Kxi-2') | `failed`
//!   (refused, nothing kept by KM-B) | `void-pending` -> `voided` | `failed-to-void`. KM-A
//!   releases keys only on `relayed`; a KM-A that restarts voids what it left in flight.
//! - KM-B: `in-flight` -> `relayed` (delivered or forwarded; recorded before the
//!   acknowledgement leaves) | `failed`; a void of a relayed transfer, or a restart finding
//!   one in flight, makes it `void-pending` until the keys are withdrawn -> `voided`, or
//!   `failed-to-void` when a slave SAE had fetched them.

use std::sync::Arc;

use uuid::Uuid;

use super::messages::{member, AckStatus, RelayStatus, VoidContainer, VoidExtension, EXT_VOID};
use super::problem::{Kind, Problem};
use super::send::{ask_status, void as void_at_peer, void_container};
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::events::{Event, KeyTransfer, TransferRole, TransferState};
use crate::km::kma::withdraw::{WithdrawAnswer, WithdrawRequest};
use crate::km::store::{deliveries_now_ms, Phase, Side, TransferRecord, Withdrawn};

/// Publishes the life-cycle metadata of a transfer (no key material).
pub(super) fn emit_transfer(
    agent: &Agent,
    record: &TransferRecord,
    role: TransferRole,
    phase: Phase,
) {
    let state = match phase {
        Phase::Relayed => TransferState::Transferred,
        Phase::Voided => TransferState::Voided,
        Phase::InFlight => return,
        Phase::Failed | Phase::VoidPending => TransferState::Failed,
        Phase::FailedToVoid => TransferState::FailedToVoid,
    };
    if phase == Phase::FailedToVoid {
        tracing::error!(relay_id = %record.relay_id, "voided transfer whose keys a slave SAE already fetched: failed to void");
        agent.emit(Event::RelayFailure {
            relay_id: record.relay_id,
            destination: record.dest_km.clone(),
            reason: format!(
                "transfer over {} voided, but a slave SAE had already fetched keys: failed to void",
                record.link
            ),
            exhausted: false,
        });
    }
    agent.emit(Event::KeyTransfer(KeyTransfer {
        relay_id: record.relay_id,
        link: record.link.clone(),
        role,
        key_ids: record.key_ids.clone(),
        key_size: record.key_size,
        master_sae: record.master_sae.clone(),
        slave_saes: record.slave_saes.clone(),
        state,
        at_ms: deliveries_now_ms(),
    }));
}

/// KM-A: settles a transfer KM-B did not acknowledge. When `ask` (the transfer is still
/// waited for by the previous hop), KM-B's Kxi-2' status `relayed` for exactly these keys
/// settles it as relayed; otherwise it is voided: `void-pending` while KM-B does not answer.
pub(super) async fn settle_sent(
    agent: &Agent,
    link: &LinkConfig,
    record: &TransferRecord,
    ask: bool,
) -> Phase {
    if ask {
        if let Some((RelayStatus::Relayed, mut ids)) =
            ask_status(agent, link, record.relay_id).await
        {
            let mut ours = record.key_ids.clone();
            ours.sort_unstable();
            ids.sort_unstable();
            if ids == ours {
                return Phase::Relayed;
            }
            tracing::warn!("KM-B's key ids of the transfer differ: voided");
        }
    }
    let container = void_container(
        link,
        record.relay_id,
        &record.key_ids,
        &record.master_sae,
        &record.slave_saes,
    );
    match void_at_peer(agent, link, &container).await {
        Some(AckStatus::FailedToVoid) => Phase::FailedToVoid,
        Some(_) => Phase::Voided,
        None => Phase::VoidPending,
    }
}

/// KM-B: where transfer `relay_id` from `sender` stands (Kxi-2').
pub async fn status(
    agent: &Arc<Agent>,
    sender: &str,
    relay_id: Uuid,
) -> Result<Option<(RelayStatus, Vec<Uuid>)>, Problem> {
    let record = agent
        .store
        .run(move |s| s.transfer(Side::Received, relay_id))
        .await
        .map_err(|e| Problem::new(Kind::ServerSideGeneralError, "store", e.to_string()))?;
    Ok(record.filter(|r| r.peer == sender).map(|r| {
        let status = match r.phase {
            Phase::InFlight | Phase::VoidPending => RelayStatus::InProgress,
            Phase::Relayed => RelayStatus::Relayed,
            Phase::Failed => RelayStatus::Failed,
            Phase::Voided => RelayStatus::Voided,
            Phase::FailedToVoid => RelayStatus::FailedToVoid,
        };
        (status, r.key_ids)
    }))
}

/// KM-B: voids the transfers from `sender` that `container` names: a transfer in flight
/// must be voided again later (503); a relayed one has its keys withdrawn.
pub async fn void(
    agent: &Arc<Agent>,
    sender: &str,
    container: &VoidContainer,
) -> Result<Vec<(Uuid, AckStatus)>, Problem> {
    let all = container.all_confirmation == Some(true) && container.key_ids.is_empty();
    let named: Option<VoidExtension> = member(container.extension.as_ref(), EXT_VOID)
        .map_err(|e| Problem::new(Kind::VoidRequestNotUnderstood, "invalid_extension", e))?;
    let (sender_id, ids) = (sender.to_owned(), container.key_ids.clone());
    let records = agent
        .store
        .run(move |s| {
            s.transfers(Side::Received, |r| {
                r.peer == sender_id
                    && (all
                        || named.as_ref().is_some_and(|n| n.relay_id == r.relay_id)
                        || r.key_ids.iter().any(|k| ids.contains(k)))
            })
        })
        .await
        .map_err(|e| Problem::new(Kind::ServerSideGeneralError, "store", e.to_string()))?;
    let mut outcome = Vec::new();
    for record in records {
        let phase = match record.phase {
            Phase::InFlight => {
                return Err(Problem::new(
                    Kind::ServerSideGeneralError,
                    "transfer_in_progress",
                    format!(
                        "transfer {} is in progress: void it again later",
                        record.relay_id
                    ),
                ))
            }
            Phase::Relayed | Phase::VoidPending => settle_received(agent, &record)
                .await
                .map_err(|e| Problem::new(Kind::ServerSideGeneralError, "withdrawal_failed", e))?,
            Phase::Failed | Phase::Voided => Phase::Voided,
            Phase::FailedToVoid => Phase::FailedToVoid,
        };
        let status = if phase == Phase::FailedToVoid {
            AckStatus::FailedToVoid
        } else {
            AckStatus::Voided
        };
        outcome.extend(record.key_ids.iter().map(|k| (*k, status)));
    }
    Ok(outcome)
}

/// KM-B: withdraws the keys of a transfer it passed on (recorded `void-pending` first, so a
/// crash meanwhile resumes it); the transfer's final phase.
pub(super) async fn settle_received(
    agent: &Arc<Agent>,
    record: &TransferRecord,
) -> Result<Phase, String> {
    set_phase(
        agent,
        Side::Received,
        record.relay_id,
        Phase::VoidPending,
        |p| matches!(p, Phase::Relayed | Phase::InFlight),
    )
    .await;
    let outcomes = withdraw(agent, record).await?;
    let phase = if outcomes.iter().any(|(_, w)| *w == Withdrawn::Fetched) {
        Phase::FailedToVoid
    } else {
        Phase::Voided
    };
    set_phase(agent, Side::Received, record.relay_id, phase, |p| {
        p == Phase::VoidPending
    })
    .await;
    tracing::info!(relay_id = %record.relay_id, ?phase, "transfer voided at the receiving KM");
    emit_transfer(agent, record, TransferRole::Receiver, phase);
    Ok(phase)
}

/// Records a transfer's new phase (if `allowed` lets it leave its current one).
pub(super) async fn set_phase(
    agent: &Agent,
    side: Side,
    relay_id: Uuid,
    phase: Phase,
    allowed: impl Fn(Phase) -> bool + Send + 'static,
) {
    let now = deliveries_now_ms();
    let result = agent
        .store
        .run(move |s| s.write(|t| t.set_transfer_phase(side, relay_id, phase, now, allowed)))
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "cannot record a transfer's phase");
    }
}

/// Withdraws a transfer's keys from their slave SAEs: here when this KM delivered them,
/// else at the destination KM through the next hops they took.
async fn withdraw(
    agent: &Arc<Agent>,
    record: &TransferRecord,
) -> Result<Vec<(Uuid, Withdrawn)>, String> {
    if record.dest_km == agent.config.node {
        let (slaves, ids) = (record.slave_saes.clone(), record.key_ids.clone());
        return agent
            .store
            .run(move |s| {
                s.write(|t| {
                    ids.iter()
                        .map(|k| Ok((*k, t.withdraw_for(&slaves, *k)?)))
                        .collect()
                })
            })
            .await
            .map_err(|e| e.to_string());
    }
    // the hops recorded when the keys were forwarded; the current route when the KM
    // stopped before recording them
    let links: Vec<LinkConfig> = if record.next_links.is_empty() {
        agent
            .next_hops(&record.dest_km)
            .into_iter()
            .map(|(l, _)| l)
            .collect()
    } else {
        record
            .next_links
            .iter()
            .filter_map(|l| agent.link_config(l).cloned())
            .collect()
    };
    let request = WithdrawRequest {
        relay_id: record.relay_id,
        dest_km: record.dest_km.clone(),
        key_ids: record.key_ids.clone(),
        hops_left: crate::km::kma::relay::messages::MAX_HOPS,
    };
    let mut errors = Vec::new();
    for link in links {
        match crate::km::kma::withdraw::ask(agent, &link, &request).await {
            Ok(WithdrawAnswer { outcomes }) => return Ok(outcomes),
            Err(error) => errors.push(error),
        }
    }
    Err(format!(
        "no next hop withdrew the keys: {}",
        errors.join("; ")
    ))
}

/// Settles what an earlier run left in flight and retries pending voids, for the agent's
/// life (KM-A: voids until KM-B answers; KM-B: withdrawals until the destination answers).
pub async fn run(agent: Arc<Agent>, started_ms: u64) {
    if agent.transfer_links().next().is_none() {
        return;
    }
    // transfers recorded before this run started were cut off by a stop or a crash
    let cut_off = agent
        .store
        .run(move |s| {
            let mut ids = Vec::new();
            for side in [Side::Sent, Side::Received] {
                for r in
                    s.transfers(side, |r| r.phase == Phase::InFlight && r.at_ms < started_ms)?
                {
                    ids.push((side, r.relay_id));
                }
            }
            s.write(|t| {
                for (side, id) in &ids {
                    t.set_transfer_phase(*side, *id, Phase::VoidPending, started_ms, |p| {
                        p == Phase::InFlight
                    })?;
                }
                Ok(ids.len())
            })
        })
        .await;
    match cut_off {
        Ok(0) => {}
        Ok(n) => tracing::warn!(transfers = n, "transfers cut off by a restart are voided"),
        Err(error) => tracing::error!(%error, "cannot read the transfer records"),
    }
    loop {
        retry_pending(&agent).await;
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// How often pending voids are retried.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

async fn retry_pending(agent: &Arc<Agent>) {
    let pending = agent
        .store
        .run(|s| {
            Ok((
                s.transfers(Side::Sent, |r| r.phase == Phase::VoidPending)?,
                s.transfers(Side::Received, |r| r.phase == Phase::VoidPending)?,
            ))
        })
        .await;
    let Ok((sent, received)) = pending else {
        return;
    };
    for record in sent {
        let Some(link) = agent.link_config(&record.link).cloned() else {
            continue;
        };
        let phase = settle_sent(agent, &link, &record, false).await;
        if phase != Phase::VoidPending {
            set_phase(agent, Side::Sent, record.relay_id, phase, |p| {
                p == Phase::VoidPending
            })
            .await;
            tracing::info!(relay_id = %record.relay_id, ?phase, "pending void answered");
            emit_transfer(agent, &record, TransferRole::Sender, phase);
        }
    }
    for record in received {
        if let Err(error) = settle_received(agent, &record).await {
            tracing::warn!(relay_id = %record.relay_id, %error, "withdrawal of voided keys still pending");
        }
    }
}
