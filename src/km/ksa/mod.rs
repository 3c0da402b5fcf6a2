//! The key supply agent: ETSI GS QKD 014 V1.1.1 for SAEs (HTTPS, mutual TLS).
//!
//! The calling SAE is the common name of its client certificate; it must be an SAE served by
//! this KM. Every error is an ETSI `Error` body: 400, 401 or 503 from the handlers (503 with
//! `Retry-After`, also from [`crate::km::ksa::admission`]), 404 and 405 from the router, 408, 413, 414
//! and 431 from the listener ([`crate::https`]); a request that fails changes nothing.
//!
//! - [`admission`] — admission control (503 beyond the caps);
//! - [`applications`] — the applications (ETSI GS QKD 015 sense) learned from key requests;
//! - [`expiry`] — erasing keys their slave SAE did not fetch in time.

pub mod admission;
pub mod applications;
pub mod expiry;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::json;
use uuid::Uuid;

use crate::etsi014::{ErrorBody, Key, KeyContainer, KeyIds, KeyRequest, Status};
use crate::https::RETRY_AFTER_SECONDS;
use crate::km::agent::Agent;
use crate::km::ck::RouteAnswer;
use crate::km::kma::otp;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::send::supply;
use crate::km::ksa::admission::Refusal;
use crate::km::store::StoreError;
use crate::tls::PeerIdentity;

/// An ETSI GS QKD 014 error answer.
#[derive(Debug)]
pub struct Etsi014Error {
    status: StatusCode,
    body: ErrorBody,
}

impl Etsi014Error {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                message: message.into(),
                details: None,
            },
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub(crate) fn detail(mut self, detail: serde_json::Value) -> Self {
        self.body.details.get_or_insert_with(Vec::new).push(detail);
        self
    }
}

impl IntoResponse for Etsi014Error {
    fn into_response(self) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = [(
                axum::http::header::RETRY_AFTER,
                RETRY_AFTER_SECONDS.to_string(),
            )];
            return (self.status, retry, Json(self.body)).into_response();
        }
        (self.status, Json(self.body)).into_response()
    }
}

type Result<T> = std::result::Result<T, Etsi014Error>;

/// The ETSI GS QKD 014 routes of a KM, behind admission control; every answer, unknown
/// paths and methods included, is an ETSI `Error` body.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/api/v1/keys/{slave}/status", get(status))
        .route(
            "/api/v1/keys/{slave}/enc_keys",
            get(enc_keys_get).post(enc_keys_post),
        )
        .route(
            "/api/v1/keys/{master}/dec_keys",
            get(dec_keys_get).post(dec_keys_post),
        )
        .fallback(|| async { Etsi014Error::new(StatusCode::NOT_FOUND, "unknown request path") })
        .method_not_allowed_fallback(|| async {
            Etsi014Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            )
        })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), admit))
        .with_state(agent)
}

/// The middleware of the ETSI 014 router: admission control ([`crate::km::ksa::admission`]), and
/// the metrics of every request.
async fn admit(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let sae = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|identity| identity.0.clone())
        .unwrap_or_default();
    let call = match request.uri().path().rsplit('/').next() {
        Some("status") => "status",
        Some("enc_keys") => "enc_keys",
        Some("dec_keys") => "dec_keys",
        _ => "other",
    };
    let started = std::time::Instant::now();
    match agent.admission.enter(&sae) {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            agent.metrics.etsi014_request(
                call,
                &sae,
                response.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            response
        }
        Err(refusal) => {
            agent.counters.requests_shed.fetch_add(1, Ordering::Relaxed);
            let (message, detail) = match refusal {
                Refusal::Km(max) => (
                    "the KME is handling its maximum of requests",
                    serde_json::json!({ "max_concurrent_requests": max }),
                ),
                Refusal::Sae(max) => (
                    "the SAE has its maximum of requests in progress",
                    serde_json::json!({ "max_concurrent_requests_per_sae": max }),
                ),
            };
            tracing::debug!(%sae, ?refusal, "ETSI 014 request shed");
            agent
                .metrics
                .etsi014_request(call, &sae, 503, started.elapsed().as_secs_f64());
            Etsi014Error::unavailable(message)
                .detail(detail)
                .into_response()
        }
    }
}

/// The SAE ID in a request path, refused with an ETSI `Error` body when it is not UTF-8.
struct Sae(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Sae {
    type Rejection = Etsi014Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(sae)| Sae(sae))
            .map_err(|e| Etsi014Error::bad_request(format!("bad SAE ID in the path: {e}")))
    }
}

/// The calling SAE, which must be served by this KM.
fn caller(agent: &Agent, identity: &PeerIdentity) -> Result<String> {
    let sae = identity
        .0
        .as_deref()
        .ok_or_else(|| Etsi014Error::unauthorized("a client certificate is required"))?;
    if !agent.is_local_sae(sae) {
        return Err(Etsi014Error::unauthorized(format!(
            "SAE {sae} is not registered at KME {}",
            agent.config.node
        )));
    }
    Ok(sae.to_owned())
}

/// The node of SAE `other`, asking the domain controller for a route when this KM has none
/// to it: an SAE it does not know (another QKDN's: Y.3818 9.1, procedure 1), or one it knows
/// without a relay route to its node (keys on demand; or an SAE it met as the master of
/// another domain's session, whose segment ends here). The controller installs the route
/// and the SAE's entry on the KMs before it answers.
async fn resolve_peer_sae(agent: &Agent, caller: &str, other: &str) -> Result<String> {
    let routed = agent
        .sae_node(other)
        .is_some_and(|node| node == agent.config.node || agent.next_hop(&node).is_some());
    if other == caller || routed {
        return peer_sae(agent, caller, other);
    }
    // a distributed QKDN asks its speaker (a gateway node) instead of a controller
    let speaker = agent
        .local_control()
        .and_then(|c| c.speaker())
        .map(|(_, kma)| kma);
    let Some(controller) = agent.config.controller.clone().or(speaker) else {
        return peer_sae(agent, caller, other);
    };
    match crate::km::ck::request_route(agent, &controller, caller, other).await {
        RouteAnswer::Installed => {
            // the crossing reaches this node's link state by flooding
            agent
                .learned(std::time::Duration::from_secs(5), |a| {
                    a.sae_node(other).is_some_and(|n| a.next_hop(&n).is_some())
                })
                .await;
            peer_sae(agent, caller, other)
        }
        RouteAnswer::UnknownSae => Err(Etsi014Error::bad_request(format!("unknown SAE {other}"))),
        RouteAnswer::Refused { status } => Err(Etsi014Error::unavailable(format!(
            "no interworking route to SAE {other}"
        ))
        .detail(json!({ "controller_status": status }))),
        RouteAnswer::Unreachable => Err(Etsi014Error::unavailable(
            "the domain controller is unreachable",
        )),
    }
}

fn peer_sae(agent: &Agent, caller: &str, other: &str) -> Result<String> {
    if other == caller {
        return Err(Etsi014Error::bad_request(
            "master and slave SAE must differ",
        ));
    }
    agent
        .sae_node(other)
        .ok_or_else(|| Etsi014Error::bad_request(format!("unknown SAE {other}")))
}

async fn status(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Sae(slave): Sae,
) -> Result<Json<Status>> {
    let master = caller(&agent, &identity)?;
    let target = resolve_peer_sae(&agent, &master, &slave).await?;
    let limits = &agent.limits();
    let per_key = otp::blocks_per_key(limits.key_size) as u64;
    let (stored, max) = if target == agent.config.node {
        let max = u64::from(limits.max_key_per_request);
        (max, max)
    } else {
        let link = agent.next_hop(&target).ok_or_else(|| {
            Etsi014Error::unavailable(format!("no key relay route to KME {target}"))
        })?;
        let (id, parity) = (link.id.clone(), link.end.owner());
        let own = agent
            .store
            .run(move |s| s.available(&id, parity))
            .await
            .map_err(|e| Etsi014Error::unavailable(e.to_string()))? as u64;
        // one block of every request keys the one-time MAC
        (
            own.saturating_sub(1) / per_key,
            (link.capacity_blocks as u64 / 2).saturating_sub(1) / per_key,
        )
    };
    Ok(Json(Status {
        source_KME_ID: agent.config.node.clone(),
        target_KME_ID: target,
        master_SAE_ID: master,
        slave_SAE_ID: slave,
        key_size: limits.key_size,
        stored_key_count: stored,
        max_key_count: max,
        max_key_per_request: limits.max_key_per_request,
        max_key_size: limits.max_key_size,
        min_key_size: limits.min_key_size,
        max_SAE_ID_count: limits.max_sae_id_count,
        status_extension: None,
    }))
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn parse_u32(name: &str, value: &str) -> Result<u32> {
    value
        .parse()
        .map_err(|_| Etsi014Error::bad_request(format!("{name} must be a non-negative integer")))
}

async fn enc_keys_get(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Sae(slave): Sae,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyContainer>> {
    caller(&agent, &identity)?;
    let mut request = KeyRequest::default();
    for (name, value) in parse_query(query.as_deref()) {
        match name.as_str() {
            "number" => request.number = Some(parse_u32("number", &value)?),
            "size" => request.size = Some(parse_u32("size", &value)?),
            other => {
                return Err(Etsi014Error::bad_request(format!(
                    "unknown parameter {other}"
                )))
            }
        }
    }
    enc_keys(agent, identity, slave, request).await
}

async fn enc_keys_post(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Sae(slave): Sae,
    body: Bytes,
) -> Result<Json<KeyContainer>> {
    // the caller is known before its body is read
    caller(&agent, &identity)?;
    // every parameter is optional: an empty body asks for the defaults
    let request: KeyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        KeyRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Etsi014Error::bad_request("malformed key request")
                .detail(json!({"parse_error": e.to_string()}))
        })?
    };
    enc_keys(agent, identity, slave, request).await
}

async fn enc_keys(
    agent: Arc<Agent>,
    identity: PeerIdentity,
    slave: String,
    request: KeyRequest,
) -> Result<Json<KeyContainer>> {
    let master = caller(&agent, &identity)?;
    resolve_peer_sae(&agent, &master, &slave).await?;
    let limits = &agent.limits();
    let number = request.number.unwrap_or(1);
    if number == 0 || number > limits.max_key_per_request {
        return Err(Etsi014Error::bad_request(format!(
            "number must be between 1 and max_key_per_request ({})",
            limits.max_key_per_request
        )));
    }
    let size = request.size.unwrap_or(limits.key_size);
    if !size.is_multiple_of(8) || size < limits.min_key_size || size > limits.max_key_size {
        return Err(Etsi014Error::bad_request(format!(
            "size not supported: it must be a multiple of 8 between {} and {}",
            limits.min_key_size, limits.max_key_size
        )));
    }
    if let Some(mandatory) = request
        .extension_mandatory
        .as_ref()
        .filter(|m| !m.is_empty())
    {
        return Err(Etsi014Error::bad_request("unsupported mandatory extension")
            .detail(json!({"extension_mandatory": mandatory})));
    }
    let additional = request.additional_slave_SAE_IDs.unwrap_or_default();
    if additional.len() > limits.max_sae_id_count as usize {
        return Err(Etsi014Error::bad_request(format!(
            "more than max_SAE_ID_count ({}) additional slave SAEs",
            limits.max_sae_id_count
        )));
    }
    let mut slaves = vec![slave];
    for extra in additional {
        if slaves.contains(&extra) {
            return Err(Etsi014Error::bad_request(format!(
                "SAE {extra} named twice"
            )));
        }
        resolve_peer_sae(&agent, &master, &extra).await?;
        slaves.push(extra);
    }
    if slaves.len() - 1 > limits.max_sae_id_count as usize {
        return Err(Etsi014Error::bad_request(format!(
            "more than max_SAE_ID_count ({}) additional slave SAEs",
            limits.max_sae_id_count
        )));
    }
    // the keys' period stays open until they are accounted
    let supplying = agent.accounting.begin_supply();
    let issued = supply(&agent, &master, &slaves, number, size)
        .await
        .map_err(|e| match e {
            RelayError::Rejected(m) => Etsi014Error::bad_request(m),
            RelayError::Qos(refusal) => Etsi014Error::unavailable("keys cannot be supplied now")
                .detail(crate::km::qos::gate::refusal_detail(&refusal)),
            other => {
                tracing::warn!(error = %other, "key supply failed");
                Etsi014Error::unavailable("keys cannot be supplied now")
                    .detail(json!({"reason": other.to_string()}))
            }
        })?;
    agent
        .counters
        .supplied(&master, &slaves, issued.len() as u64);
    agent.metrics.keys(&master, "master", issued.len() as u64);
    crate::audit::hooks::keys_supplied(
        &agent.audit,
        &master,
        &slaves,
        size,
        issued.iter().map(|k| k.key_id),
    );
    let ids: Vec<Uuid> = issued.iter().map(|k| k.key_id).collect();
    crate::km::accounting::supplied(&agent, &master, &slaves, size, &ids).await;
    drop(supplying);
    if let Some(app) = agent
        .applications
        .note(&agent.config.domain, &master, &slaves)
    {
        agent.emit(crate::km::events::Event::ApplicationNew(app));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(KeyContainer {
        keys: issued
            .iter()
            .map(|k| Key {
                key_ID: k.key_id.to_string(),
                key_ID_extension: None,
                key: b64.encode(&k.key[..]),
                key_extension: None,
            })
            .collect(),
        key_container_extension: None,
    }))
}

async fn dec_keys_get(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Sae(master): Sae,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyContainer>> {
    caller(&agent, &identity)?;
    let mut ids = Vec::new();
    for (name, value) in parse_query(query.as_deref()) {
        match name.as_str() {
            "key_ID" => ids.push(value),
            other => {
                return Err(Etsi014Error::bad_request(format!(
                    "unknown parameter {other}"
                )))
            }
        }
    }
    dec_keys(agent, identity, master, ids).await
}

async fn dec_keys_post(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Sae(master): Sae,
    body: Bytes,
) -> Result<Json<KeyContainer>> {
    // the caller is known before its body is read
    caller(&agent, &identity)?;
    let request: KeyIds = serde_json::from_slice(&body).map_err(|e| {
        Etsi014Error::bad_request("malformed key IDs").detail(json!({"parse_error": e.to_string()}))
    })?;
    let ids = request.key_IDs.into_iter().map(|k| k.key_ID).collect();
    dec_keys(agent, identity, master, ids).await
}

async fn dec_keys(
    agent: Arc<Agent>,
    identity: PeerIdentity,
    master: String,
    ids: Vec<String>,
) -> Result<Json<KeyContainer>> {
    let slave = caller(&agent, &identity)?;
    peer_sae(&agent, &slave, &master)?;
    let limits = &agent.limits();
    if ids.is_empty() || ids.len() > limits.max_key_per_request as usize {
        return Err(Etsi014Error::bad_request(format!(
            "between 1 and {} key IDs per request",
            limits.max_key_per_request
        )));
    }
    let mut key_ids = Vec::with_capacity(ids.len());
    for id in &ids {
        let parsed = Uuid::parse_str(id)
            .map_err(|_| Etsi014Error::bad_request(format!("key_ID {id} is not a UUID")))?;
        if key_ids.contains(&parsed) {
            return Err(Etsi014Error::bad_request(format!(
                "key_ID {id} requested twice"
            )));
        }
        key_ids.push(parsed);
    }
    let taken = agent
        .store
        .run({
            let (slave, master) = (slave.clone(), master.clone());
            let now = crate::km::store::deliveries_now_ms();
            let window = agent.config.limits.refetch_window_seconds;
            let until = now.saturating_add(window.saturating_mul(1000));
            move |s| s.write(|txn| txn.take_deliveries(&slave, &master, &key_ids, now, until))
        })
        .await
        .map_err(|e| match e {
            StoreError::UnknownKey(id) => Etsi014Error::bad_request("unknown key_ID")
                .detail(json!({"key_ID": id.to_string()})),
            StoreError::ExpiredKey(id) => {
                Etsi014Error::bad_request("key_ID expired before it was fetched")
                    .detail(json!({"key_ID": id.to_string()}))
            }
            StoreError::NotForThisSae(id) => {
                Etsi014Error::unauthorized("key_ID was not issued for this SAE and master SAE")
                    .detail(json!({"key_ID": id.to_string()}))
            }
            other => Etsi014Error::unavailable(other.to_string()),
        })?;
    let first = taken.iter().filter(|d| !d.refetched).count() as u64;
    tracing::info!(%slave, %master, keys = taken.len(), refetched = taken.len() as u64 - first, "keys supplied to slave SAE");
    agent
        .counters
        .keys_delivered
        .fetch_add(first, std::sync::atomic::Ordering::Relaxed);
    agent.metrics.keys(&slave, "slave", first);
    crate::audit::hooks::keys_delivered(
        &agent.audit,
        &slave,
        &master,
        taken.iter().map(|d| (d.key_id, d.key.len(), d.refetched)),
    );
    let ids: Vec<Uuid> = taken.iter().map(|d| d.key_id).collect();
    let bits = taken.first().map_or(0, |d| d.key.len() as u32 * 8);
    crate::km::accounting::delivered(&agent, &slave, &master, bits, &ids).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(KeyContainer {
        keys: taken
            .iter()
            .map(|d| Key {
                key_ID: d.key_id.to_string(),
                key_ID_extension: None,
                key: b64.encode(&d.key[..]),
                key_extension: None,
            })
            .collect(),
        key_container_extension: None,
    }))
}
