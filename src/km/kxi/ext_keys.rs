//! `POST /kmapi/v1/ext_keys`: an `ext_key_container` from a peer KM of another QKDN,
//! checked against ETSI GS QKD 020, then taken in over a Qx link (Kxi-1: pads and one-time
//! MAC) or a transfer link (Kxi-1', [`super::transfer`]); answered 202 and acknowledged
//! later (asynchronous mode) or answered 200 with the acknowledgement (synchronous mode).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use tracing::Instrument;
use uuid::Uuid;

use super::messages::{
    extension_error, extension_of, member, sae_ids_error, unsupported_mandatory, AckContainer,
    AckExtension, AckStatus, ExtKeyContainer, KeyIdEntry, RelayExtension, RelayStatus,
    VoidContainer, VoidExtension, AUTH_HEADER, EXT_ACK, EXT_PAD, EXT_RELAY, EXT_VOID, MAX_ITEMS,
    MAX_URL,
};
use super::problem::{Kind, Problem};
use super::server::kxi_peer;
use crate::km::agent::Agent;
use crate::km::config::{LinkConfig, LinkKind};
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::{b64, RelayBody, RelayEnvelope, RelayedKey};
use crate::km::kma::relay::receive::{act, verify};
use crate::tls::PeerIdentity;

/// The outcome of accepted keys, once resolved: the acknowledgement.
pub(super) type Outcome = Pin<Box<dyn Future<Output = AckContainer> + Send>>;

pub(super) async fn ext_keys(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sender, links) = match kxi_peer(&agent, &identity) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    match take(&agent, &sender, &links, &headers, &body).await {
        Ok(response) => response,
        Err(problem) => {
            tracing::warn!(%sender, problem = %problem.summary(), "ext_keys refused");
            problem.into_response()
        }
    }
}

async fn take(
    agent: &Arc<Agent>,
    sender: &str,
    links: &[LinkConfig],
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Problem> {
    // over Qx links only, every request carries its one-time MAC: refused before parsing
    if links.iter().all(|l| l.kind == LinkKind::Qkd) && parse_auth(headers).is_none() {
        tracing::warn!(%sender, "ext_keys without authentication");
        return Err(Problem::new(
            Kind::Unauthorized,
            "authentication",
            "Kxi-Authentication header missing or malformed",
        ));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Problem::new(
            Kind::MissingParameters,
            "malformed_body",
            "not UTF-8",
        ));
    };
    let container: ExtKeyContainer = serde_json::from_str(text)
        .map_err(|e| Problem::new(Kind::MissingParameters, "malformed_body", e.to_string()))?;
    check(&container)?;
    // an unsupported mandatory extension: refused before anything is looked at or kept
    if let Some(name) = unsupported_mandatory(container.extension_mandatory.as_ref()) {
        return Err(Problem::new(
            Kind::UnsupportedMandatoryExtension,
            "unsupported_mandatory_extension",
            name,
        ));
    }
    let relay: Option<RelayExtension> =
        member(container.extension_mandatory.as_ref(), EXT_RELAY)
            .map_err(|e| Problem::new(Kind::MissingParameters, "invalid_extension", e))?;
    let link = match &relay {
        Some(r) => links.iter().find(|l| l.id == r.link),
        None => links.iter().find(|l| l.kind == LinkKind::Transfer),
    }
    .ok_or_else(|| {
        Problem::new(
            Kind::KeyRoutingError,
            "invalid_routing",
            "no Kxi link of this KM joins it to the caller",
        )
    })?
    .clone();
    if let Some(url) = &container.ack_callback_url {
        if !url.starts_with(&format!("{}/", link.peer_kma)) {
            return Err(Problem::new(
                Kind::MissingParameters,
                "invalid_ack_callback_url",
                "ack_callback_url must be on the peer KM's KMA",
            ));
        }
    }
    let callback = container.ack_callback_url.clone();
    let (span, outcome) = match link.kind {
        LinkKind::Qkd => qx(agent, sender, &link, headers, text, container, relay).await?,
        LinkKind::Transfer => {
            super::transfer::receive(agent, sender, &link, container, relay).await?
        }
    };
    Ok(respond(agent, &link, callback, span, outcome).await)
}

/// The checks of ETSI GS QKD 020 on an `ext_key_container`.
fn check(container: &ExtKeyContainer) -> Result<(), Problem> {
    let missing =
        |detail: &str, text: &str| Err(Problem::new(Kind::MissingParameters, detail, text));
    if container.keys.is_empty() || container.keys.len() > MAX_ITEMS {
        return missing("invalid_keys", "keys holds 1 to 1024 keys");
    }
    if let Some(details) = sae_ids_error(&container.initiator_sae_id, &container.target_sae_ids) {
        return Err(
            Problem::with_status(Kind::MissingParameters, StatusCode::BAD_REQUEST).details(details),
        );
    }
    if let Some(url) = &container.ack_callback_url {
        if url.len() > MAX_URL || !url.starts_with("https://") {
            return missing(
                "invalid_ack_callback_url",
                "an https:// URL of at most 1024 characters",
            );
        }
    }
    let extensions = [
        &container.extension_mandatory,
        &container.extension_optional,
    ]
    .into_iter()
    .chain(container.keys.iter().map(|k| &k.extension))
    .flatten();
    for extension in extensions {
        if let Some(error) = extension_error(extension) {
            return missing("invalid_extension", &error);
        }
    }
    let mut seen = HashSet::new();
    let mut length = None;
    for key in &container.keys {
        if !seen.insert(key.key_id) {
            return missing("duplicate_key_id", &key.key_id.to_string());
        }
        let Ok(value) = b64().decode(&key.value).map(zeroize::Zeroizing::new) else {
            return missing("invalid_value", "value is not Base64");
        };
        if value.is_empty() || *length.get_or_insert(value.len()) != value.len() {
            return missing("invalid_value", "every key has the same, non-zero size");
        }
    }
    Ok(())
}

/// The problem a relay that failed at this KM is answered with.
pub(super) fn relay_problem(error: &RelayError) -> Problem {
    match error {
        RelayError::Rejected(m) if m.contains("authentication") => {
            Problem::new(Kind::Unauthorized, "authentication", m.clone())
        }
        RelayError::Rejected(m) => Problem::new(Kind::MissingParameters, "rejected", m.clone()),
        RelayError::NoRoute(dest) => {
            Problem::new(Kind::KeyRoutingError, "no_known_route", dest.clone())
        }
        e if e.is_exhaustion() => Problem::new(
            Kind::InsufficientKeyMaterial,
            "insufficient_key_material",
            e.to_string(),
        ),
        e => Problem::new(Kind::ServerSideGeneralError, "error", e.to_string()),
    }
}

/// An `ack_container` answering `container`.
pub(super) fn ack_for(
    container_ids: &[Uuid],
    initiator: &str,
    targets: &[String],
    status: AckStatus,
    message: Option<String>,
    extension: Option<AckExtension>,
) -> AckContainer {
    AckContainer {
        key_id_container: container_ids
            .iter()
            .map(|&key_id| KeyIdEntry {
                key_id,
                extension: None,
            })
            .collect(),
        ack_status: status,
        initiator_sae_id: initiator.to_owned(),
        target_sae_ids: targets.to_vec(),
        message: message.map(|m| m.chars().take(super::messages::MAX_MESSAGE).collect()),
        extension: extension.map(|e| extension_of(EXT_ACK, e)),
    }
}

/// Answers accepted keys: 202 and the acknowledgement posted to `callback` once resolved,
/// or (no callback: synchronous mode) 200 with the acknowledgement.
async fn respond(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    callback: Option<String>,
    span: tracing::Span,
    outcome: Outcome,
) -> Response {
    let Some(url) = callback else {
        let ack = outcome.instrument(span).await;
        return (StatusCode::OK, Json(vec![ack])).into_response();
    };
    let client = agent.client_for(link).clone();
    let signing = ack_signing(agent, link);
    tokio::spawn(
        async move {
            let ack = outcome.await;
            post_acks(&client, &url, &[ack], &signing).await;
        }
        .instrument(span),
    );
    StatusCode::ACCEPTED.into_response()
}

/// Posts acknowledgements to a callback URL, retrying a little; whether it took them.
pub(super) async fn post_acks(
    client: &reqwest::Client,
    url: &str,
    acks: &[AckContainer],
    signing: &crate::nonrepudiation::http::ClientPoint,
) -> bool {
    let agreement = ack_agreement(acks);
    for attempt in 0..3u64 {
        // signed by this KM: the peer keeps the acknowledgement as evidence
        let request = match client.post(url).json(acks).build() {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, "ack callback not built");
                return false;
            }
        };
        match signing.send(client, request, &agreement).await {
            Ok(r) if (200..300).contains(&r.status) => return true,
            Ok(r) => tracing::warn!(status = %r.status, "ack callback refused"),
            Err(error) => tracing::warn!(%error, "ack callback failed"),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    false
}

/// The agreement acknowledgements belong to (their evidence index): `relay <id>` of the
/// first that names its relay, else `keys <first key id>`.
pub fn ack_agreement(acks: &[AckContainer]) -> String {
    acks.iter()
        .find_map(|ack| {
            let named: Option<AckExtension> =
                member(ack.extension.as_ref(), EXT_ACK).unwrap_or_default();
            named.map(|e| format!("relay {}", e.relay_id))
        })
        .or_else(|| {
            acks.first()
                .and_then(|a| a.key_id_container.first())
                .map(|k| format!("keys {}", k.key_id))
        })
        .unwrap_or_else(|| "acks".into())
}

/// The agreement a void belongs to: `relay <id>` when it names its relay, else `keys <first
/// key id>` (`void all` when it names none).
pub fn void_agreement(body: &[u8]) -> String {
    let Ok(void) = serde_json::from_slice::<VoidContainer>(body) else {
        return "void (unreadable)".into();
    };
    let named: Option<VoidExtension> =
        member(void.extension.as_ref(), EXT_VOID).unwrap_or_default();
    match (named, void.key_ids.first()) {
        (Some(e), _) => format!("relay {}", e.relay_id),
        (None, Some(key_id)) => format!("keys {key_id}"),
        (None, None) => "void all".into(),
    }
}

/// The agreement an offer (`ext_key_container`) belongs to: `relay <id>` of its relay
/// extension, else `keys <first key id>`.
pub fn offer_agreement(body: &[u8]) -> String {
    let Ok(offer) = serde_json::from_slice::<ExtKeyContainer>(body) else {
        return "offer (unreadable)".into();
    };
    let named: Option<RelayExtension> =
        member(offer.extension_mandatory.as_ref(), EXT_RELAY).unwrap_or_default();
    match (named, offer.keys.first()) {
        (Some(e), _) => format!("relay {}", e.relay_id),
        (None, Some(key)) => format!("keys {}", key.key_id),
        (None, None) => "offer".into(),
    }
}

/// The signing of acknowledgements sent to the peer of `link` ([`crate::nonrepudiation`]).
pub(super) fn ack_signing(
    agent: &Agent,
    link: &LinkConfig,
) -> crate::nonrepudiation::http::ClientPoint {
    let notary = crate::nonrepudiation::for_tls(&agent.config.tls).unwrap_or_else(|error| {
        tracing::error!(%error, "Kxi: no signing key; acknowledgements go unsigned");
        Arc::new(crate::nonrepudiation::Notary::unusable())
    });
    crate::nonrepudiation::http::ClientPoint {
        notary,
        point: "kxi",
        peer: link
            .peer_domain
            .clone()
            .unwrap_or_else(|| agent.config.domain.clone()),
        peer_identity: link.peer_identity(),
    }
}

fn parse_auth(headers: &HeaderMap) -> Option<(u64, String)> {
    let value = headers.get(AUTH_HEADER)?.to_str().ok()?;
    let mut block = None;
    let mut tag = None;
    for part in value.split(',') {
        let (name, v) = part.trim().split_once('=')?;
        match name {
            "block" => block = v.parse().ok(),
            // the tag is Base64 and may end with '='
            "tag" => tag = Some(part.trim()["tag=".len()..].to_owned()),
            _ => return None,
        }
    }
    Some((block?, tag?))
}

/// The relay body a Kxi-1 container over a Qx link stands for.
fn qx_relay_body(
    container: &ExtKeyContainer,
    relay: &RelayExtension,
) -> Result<RelayBody, Problem> {
    let mut keys = Vec::with_capacity(container.keys.len());
    for key in &container.keys {
        let pad: Vec<u64> = member(key.extension.as_ref(), EXT_PAD)
            .ok()
            .flatten()
            .ok_or_else(|| {
                Problem::new(
                    Kind::MissingParameters,
                    "missing_pad",
                    key.key_id.to_string(),
                )
            })?;
        keys.push(RelayedKey {
            key_id: key.key_id,
            pad,
            ciphertext: Some(key.value.clone()),
        });
    }
    Ok(RelayBody {
        version: relay.version,
        relay_id: relay.relay_id,
        link: relay.link.clone(),
        origin_km: relay.origin_km.clone(),
        dest_km: relay.dest_km.clone(),
        master_sae: container.initiator_sae_id.clone(),
        slave_saes: container.target_sae_ids.clone(),
        key_size: relay.key_size,
        hops_left: relay.hops_left,
        keys,
        extension_optional: container.extension_optional.clone(),
        iwn_km: None,
    })
}

/// Kxi-1 over a Qx link: the one-time MAC and the pads checked, then the keys delivered or
/// forwarded.
async fn qx(
    agent: &Arc<Agent>,
    sender: &str,
    link: &LinkConfig,
    headers: &HeaderMap,
    text: &str,
    container: ExtKeyContainer,
    relay: Option<RelayExtension>,
) -> Result<(tracing::Span, Outcome), Problem> {
    let relay = relay
        .ok_or_else(|| Problem::new(Kind::MissingParameters, "missing_extension", EXT_RELAY))?;
    let Some((mac_seq, tag)) = parse_auth(headers) else {
        return Err(Problem::new(
            Kind::Unauthorized,
            "authentication",
            "Kxi-Authentication header missing or malformed",
        ));
    };
    let relay_id = relay.relay_id;
    let span = tracing::info_span!("relay", %relay_id, origin = %relay.origin_km, dest = %relay.dest_km, from = %sender, via = "kxi-1");
    let relay_body = qx_relay_body(&container, &relay)?;
    let envelope = RelayEnvelope {
        body: text.to_owned(),
        mac_seq,
        tag,
    };
    let verified = verify(agent, sender, &envelope, &relay_body, true)
        .instrument(span.clone())
        .await
        .map_err(|e| relay_problem(&e))?;
    debug_assert_eq!(verified.link().id, link.id);
    let key_ids: Vec<Uuid> = container.keys.iter().map(|k| k.key_id).collect();
    agent.kxi.remember(relay_id, sender, key_ids.clone());
    let (agent, sender) = (agent.clone(), sender.to_owned());
    let outcome = async move {
        let outcome = act(&agent, &sender, verified, relay_body).await;
        let (status, delivered, hops, message) = match &outcome {
            Ok(ack) => (RelayStatus::Relayed, ack.delivered, ack.hops, None),
            Err(error) => (RelayStatus::Failed, 0, 0, Some(error.to_string())),
        };
        let exhausted = outcome.as_ref().is_err_and(RelayError::is_exhaustion);
        if !agent.kxi.settle(relay_id, status) {
            tracing::warn!("relay voided while in progress");
        }
        if let Some(message) = &message {
            tracing::warn!(%message, "interworking relay failed");
            agent.emit(crate::km::events::Event::RelayFailure {
                relay_id,
                destination: relay.dest_km.clone(),
                reason: message.clone(),
                exhausted,
            });
        }
        ack_for(
            &key_ids,
            &container.initiator_sae_id,
            &container.target_sae_ids,
            if status == RelayStatus::Relayed {
                AckStatus::Relayed
            } else {
                AckStatus::Failed
            },
            message,
            Some(AckExtension {
                relay_id,
                link: relay.link.clone(),
                delivered,
                hops,
            }),
        )
    };
    Ok((span, Box::pin(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_header_is_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTH_HEADER,
            "block=42, tag=q83vEjRWeJASNFZ4kBI0Vg==".parse().unwrap(),
        );
        assert_eq!(
            parse_auth(&headers),
            Some((42, "q83vEjRWeJASNFZ4kBI0Vg==".to_owned()))
        );
        headers.insert(AUTH_HEADER, "block=x, tag=abc".parse().unwrap());
        assert_eq!(parse_auth(&headers), None);
        headers.insert(AUTH_HEADER, "tag=abc".parse().unwrap());
        assert_eq!(parse_auth(&headers), None);
    }

    fn container(keys: usize) -> ExtKeyContainer {
        ExtKeyContainer {
            keys: (0..keys)
                .map(|_| super::super::messages::ExtKey {
                    key_id: Uuid::new_v4(),
                    value: b64().encode([7u8; 32]),
                    extension: None,
                })
                .collect(),
            initiator_sae_id: "sae-a".into(),
            target_sae_ids: vec!["sae-b".into()],
            ack_callback_url: None,
            extension_mandatory: None,
            extension_optional: None,
        }
    }

    #[test]
    fn containers_are_checked_as_the_standard_says() {
        assert!(check(&container(1)).is_ok());
        assert!(check(&container(0)).is_err());
        assert!(check(&container(1025)).is_err());
        let mut c = container(2);
        c.keys[1].key_id = c.keys[0].key_id;
        assert_eq!(
            check(&c).unwrap_err().details["duplicate_key_id"],
            c.keys[0].key_id.to_string()
        );
        let mut c = container(2);
        c.keys[1].value = b64().encode([1u8; 16]);
        assert!(check(&c).is_err());
        let mut c = container(1);
        c.ack_callback_url = Some("http://x/ack".into());
        assert!(check(&c).is_err());
        let mut c = container(1);
        c.target_sae_ids.clear();
        assert_eq!(check(&c).unwrap_err().status, 400);
        let mut c = container(1);
        c.extension_optional = Some(serde_json::Map::new());
        assert!(check(&c).is_err());
    }
}
