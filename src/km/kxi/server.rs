//! The Kxi-1 / Kxi-1' routes (ETSI GS QKD 020) and the Kxi-2 / Kxi-2' routes a KM serves to
//! the peer KMs of other QKDNs (across a Qx link or an IWN's transfer link).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use uuid::Uuid;

use super::ext_keys::{ack_for, ext_keys, post_acks};
use super::messages::{
    extension_error, member, sae_ids_error, AckContainer, AckExtension, AckStatus, RelayStatus,
    VersionContainer, VoidContainer, EXT_ACK, MAX_ITEMS, MAX_URL,
};
use super::problem::{Kind, Problem};
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::tls::PeerIdentity;

/// The Kxi routes of a KM's KMA server. Also starts the settlement of transfers left
/// unsettled by an earlier run and the retry of pending voids ([`super::settle::run`]).
pub fn router(agent: Arc<Agent>) -> Router {
    if tokio::runtime::Handle::try_current().is_ok() {
        let started = crate::km::store::deliveries_now_ms();
        tokio::spawn(super::settle::run(agent.clone(), started));
    }
    Router::new()
        .route("/kmapi/versions", get(versions))
        .route("/kmapi/v1/ext_keys", post(ext_keys))
        .route("/kmapi/v1/ext_keys/ack", post(ext_keys_ack))
        .route("/kmapi/v1/ext_keys/void", post(ext_keys_void))
        .route("/kxi2/v1/relays/{relay_id}", get(relay_status))
        .route_layer(axum::middleware::from_fn_with_state(
            ack_signatures(&agent),
            crate::nonrepudiation::http::verify_and_sign,
        ))
        .with_state(agent)
}

/// The signature step of acknowledgements ([`crate::nonrepudiation::http`]): an
/// acknowledgement posted to this KM must be signed by the peer KM that sends it, or it is
/// refused with the standard's `unauthorized` problem; the acknowledgements this KM answers
/// inline (an offer without `ack_callback_url`, a void) and its Kxi-2 relay status answers
/// are signed by it, and a signed void or status read is checked and kept.
fn ack_signatures(agent: &Arc<Agent>) -> Arc<crate::nonrepudiation::http::ServerPoint> {
    let notary = crate::nonrepudiation::for_tls(&agent.config.tls).unwrap_or_else(|error| {
        tracing::error!(%error, "Kxi: no signing key; every acknowledgement is refused");
        Arc::new(crate::nonrepudiation::Notary::unusable())
    });
    let links = agent.config.links.clone();
    Arc::new(crate::nonrepudiation::http::ServerPoint {
        notary,
        point: "kxi",
        classify: |method, path, body| {
            if method == axum::http::Method::GET {
                // Kxi-2: what became of a relay, answered when its acknowledgement did not
                // come; the answer is signed like the acknowledgement it stands for
                return path
                    .strip_prefix("/kxi2/v1/relays/")
                    .map(|id| format!("relay {id}"));
            }
            if method != axum::http::Method::POST {
                return None;
            }
            match path {
                "/kmapi/v1/ext_keys/ack" => Some(
                    serde_json::from_slice::<Vec<AckContainer>>(body)
                        .map(|acks| super::ext_keys::ack_agreement(&acks))
                        .unwrap_or_else(|_| "acks (unreadable)".into()),
                ),
                "/kmapi/v1/ext_keys/void" => Some(super::ext_keys::void_agreement(body)),
                "/kmapi/v1/ext_keys" => Some(super::ext_keys::offer_agreement(body)),
                _ => None,
            }
        },
        // third-party clients of ETSI GS QKD 020 send offers and voids unsigned (qkdni's
        // own KMs sign their voids): their inline acknowledgements are signed all the same
        lenient: |_, path| path != "/kmapi/v1/ext_keys/ack",
        peer_of: Arc::new(move |identity: &str| {
            links
                .iter()
                .find(|l| l.peer_domain.is_some() && l.peer_identity() == identity)
                .and_then(|l| l.peer_domain.clone())
        }),
        refuse: Arc::new(|_status, kind, detail| {
            Problem::new(Kind::Unauthorized, kind, detail).into_response()
        }),
    })
}

/// The caller and the Kxi links (Qx or transfer) it is the peer of.
pub(super) fn kxi_peer(
    agent: &Agent,
    identity: &PeerIdentity,
) -> Result<(String, Vec<LinkConfig>), Problem> {
    let Some(caller) = identity.0.clone() else {
        return Err(Problem::new(
            Kind::Unauthorized,
            "certificate",
            "a KM certificate is required",
        ));
    };
    let links: Vec<LinkConfig> = agent
        .config
        .links
        .iter()
        .filter(|l| l.peer_domain.is_some() && l.peer_identity() == caller)
        .cloned()
        .collect();
    if links.is_empty() {
        tracing::warn!(%caller, "Kxi request from a party that is no peer GWN or IWN KM");
        return Err(Problem::new(
            Kind::Unauthorized,
            "not_a_peer",
            "not the peer KM of a Qx or transfer link",
        ));
    }
    Ok((caller, links))
}

async fn versions(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
) -> Response {
    match kxi_peer(&agent, &identity) {
        Ok(_) => Json(VersionContainer::ours()).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn ext_keys_ack(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let (sender, _) = match kxi_peer(&agent, &identity) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let not_understood = |text: String| {
        Problem::new(Kind::AckNotUnderstood, "ack_not_understood", text).into_response()
    };
    // parsed once the caller is known
    let acks: Vec<AckContainer> = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => return not_understood(e.to_string()),
    };
    if acks.is_empty() || acks.len() > MAX_ITEMS {
        return not_understood("1 to 1024 ack containers".into());
    }
    for ack in &acks {
        if ack.key_id_container.is_empty() || ack.key_id_container.len() > MAX_ITEMS {
            return not_understood("1 to 1024 key ids in each container".into());
        }
        if ack
            .message
            .as_ref()
            .is_some_and(|m| m.chars().count() > super::messages::MAX_MESSAGE)
        {
            return not_understood("message longer than 4096 characters".into());
        }
        if let Some(error) = ack.extension.as_ref().and_then(extension_error) {
            return not_understood(error);
        }
    }
    let mut unmatched = 0;
    for ack in acks {
        let named: Option<AckExtension> =
            member(ack.extension.as_ref(), EXT_ACK).unwrap_or_default();
        let named = named.map(|e| (e.relay_id, e.link));
        if !agent.kxi.deliver_ack(&sender, named, ack) {
            unmatched += 1;
        }
    }
    if unmatched > 0 {
        tracing::warn!(%sender, unmatched, "acknowledgements nobody awaits");
        return Problem::new(
            Kind::AckNotUnderstood,
            "not_awaited",
            format!("{unmatched} ack containers match no ext_keys request awaiting one"),
        )
        .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The checks of ETSI GS QKD 020 on a `void_container`.
fn check_void(container: &VoidContainer) -> Result<(), Problem> {
    let not_understood =
        |detail: &str, text: &str| Err(Problem::new(Kind::VoidRequestNotUnderstood, detail, text));
    if container.key_ids.is_empty() && container.all_confirmation != Some(true) {
        return Err(Problem::new(
            Kind::NoKeyIdsOrConfirmation,
            "no_all_confirmation",
            "key_ids is empty and all_confirmation is not true",
        ));
    }
    if container.key_ids.len() > MAX_ITEMS {
        return not_understood("too_many_key_ids", "at most 1024 key ids");
    }
    if let Some(details) = sae_ids_error(&container.initiator_sae_id, &container.target_sae_ids) {
        return Err(
            Problem::with_status(Kind::VoidRequestNotUnderstood, StatusCode::BAD_REQUEST)
                .details(details),
        );
    }
    if let Some(error) = container.extension.as_ref().and_then(extension_error) {
        return not_understood("invalid_extension", &error);
    }
    if let Some(url) = &container.ack_callback_url {
        if url.len() > MAX_URL || !url.starts_with("https://") {
            return not_understood(
                "invalid_ack_callback_url",
                "an https:// URL of at most 1024 characters",
            );
        }
    }
    Ok(())
}

async fn ext_keys_void(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let (sender, links) = match kxi_peer(&agent, &identity) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    // parsed once the caller is known
    let container: VoidContainer = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Problem::new(
                Kind::VoidRequestNotUnderstood,
                "malformed_body",
                e.to_string(),
            )
            .into_response()
        }
    };
    if let Err(problem) = check_void(&container) {
        return problem.into_response();
    }
    let callback = match &container.ack_callback_url {
        None => None,
        Some(url) => match links
            .iter()
            .find(|l| url.starts_with(&format!("{}/", l.peer_kma)))
        {
            Some(link) => Some((
                agent.client_for(link).clone(),
                url.clone(),
                super::ext_keys::ack_signing(&agent, link),
            )),
            None => {
                return Problem::new(
                    Kind::VoidRequestNotUnderstood,
                    "invalid_ack_callback_url",
                    "ack_callback_url must be on the peer KM's KMA",
                )
                .into_response()
            }
        },
    };
    let acks = match void_keys(&agent, &sender, &container).await {
        Ok(acks) => acks,
        Err(problem) => return problem.into_response(),
    };
    match callback {
        None => Json(acks).into_response(),
        Some((client, url, signing)) => {
            tokio::spawn(async move { post_acks(&client, &url, &acks, &signing).await });
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// Voids the keys `container` names that `sender` sent: Qx relays in progress here, and
/// transfers over a transfer link ([`super::transfer::void`]). One ack container per outcome.
async fn void_keys(
    agent: &Arc<Agent>,
    sender: &str,
    container: &VoidContainer,
) -> Result<Vec<AckContainer>, Problem> {
    let all = container.all_confirmation == Some(true) && container.key_ids.is_empty();
    let mut outcome: Vec<(Uuid, AckStatus)> = Vec::new();
    {
        let mut guard = agent.kxi.received.lock().expect("kxi");
        for received in guard.0.values_mut().filter(|r| r.sender == sender) {
            let named = all
                || received
                    .key_ids
                    .iter()
                    .any(|k| container.key_ids.contains(k));
            if !named {
                continue;
            }
            let status = match received.status {
                RelayStatus::InProgress | RelayStatus::Voided | RelayStatus::Failed => {
                    received.status = RelayStatus::Voided;
                    AckStatus::Voided
                }
                // a GWN's relayed keys are with the slave SAEs' KM: they stay
                _ => AckStatus::FailedToVoid,
            };
            outcome.extend(received.key_ids.iter().map(|k| (*k, status)));
        }
    }
    outcome.extend(super::transfer::void(agent, sender, container).await?);
    let mut acks = Vec::new();
    for status in [
        AckStatus::Voided,
        AckStatus::FailedToVoid,
        AckStatus::KeyNotPresent,
    ] {
        let mut ids: Vec<Uuid> = outcome
            .iter()
            .filter(|(_, s)| *s == status)
            .map(|(k, _)| *k)
            .collect();
        if status == AckStatus::KeyNotPresent {
            ids.extend(
                container
                    .key_ids
                    .iter()
                    .filter(|k| !outcome.iter().any(|(o, _)| o == *k)),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_ITEMS) {
            acks.push(ack_for(
                chunk,
                &container.initiator_sae_id,
                &container.target_sae_ids,
                status,
                None,
                None,
            ));
        }
    }
    tracing::info!(acks = acks.len(), "ext_keys void");
    Ok(acks)
}

/// Kxi-2 / Kxi-2': where a relay or transfer from the caller stands, and its key ids.
async fn relay_status(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(relay_id): Path<Uuid>,
) -> Response {
    let (sender, _) = match kxi_peer(&agent, &identity) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let (mut status, mut key_ids) = agent.kxi.status(relay_id, &sender);
    if status == RelayStatus::Unknown {
        match super::transfer::status(&agent, &sender, relay_id).await {
            Ok(Some(found)) => (status, key_ids) = found,
            Ok(None) => {}
            Err(problem) => return problem.into_response(),
        }
    }
    Json(json!({ "relay_id": relay_id, "status": status, "key_ids": key_ids })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn void(key_ids: Vec<Uuid>, all: Option<bool>) -> VoidContainer {
        VoidContainer {
            key_ids,
            initiator_sae_id: "sae-a".into(),
            target_sae_ids: vec!["sae-b".into()],
            ack_callback_url: None,
            extension: None,
            all_confirmation: all,
        }
    }

    #[test]
    fn an_empty_void_needs_all_confirmation() {
        let problem = check_void(&void(vec![], None)).unwrap_err();
        assert_eq!(problem.status, 400);
        assert!(problem.type_uri.ends_with("/no-key-ids-or-confirmation"));
        assert!(problem.details.contains_key("no_all_confirmation"));
        assert!(check_void(&void(vec![], Some(false))).is_err());
        assert!(check_void(&void(vec![], Some(true))).is_ok());
        assert!(check_void(&void(vec![Uuid::nil()], None)).is_ok());
        let mut bad = void(vec![Uuid::nil()], None);
        bad.initiator_sae_id = "with space".into();
        assert!(check_void(&bad)
            .unwrap_err()
            .type_uri
            .ends_with("/void-request-not-understood"));
    }
}
