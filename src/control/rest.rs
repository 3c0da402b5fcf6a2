//! The controller's northbound REST API for orchestrators (axum over HTTPS): topology, links,
//! sessions, routes, events, and the figures and refusals its domain's manager reports. The OpenAPI 3 document is generated from this code (utoipa) and
//! served at `/openapi.json`; errors are RFC 9457 problem details; callers authenticate with
//! a bearer token or a client certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::controller::{ControlError, Controller, ControllerEvent};
use super::sessions::{
    Interworking, InterworkingRole, Session, SessionEvent, SessionPath, SessionState,
};
use super::topology::{ForeignSae, LinkState, NodeState, Topology, WeightedHop};
use super::transfers::TransferRecord;

pub use crate::problem::{Problem, PROBLEM_JSON};

use super::credentials::{authenticate, Unauthorized};
use crate::tls::PeerIdentity;

/// Request to create a key supply session. The two SAEs must differ (400 otherwise) and be
/// known to the domain (422 otherwise).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"master_sae": "sae-a1-1", "slave_sae": "sae-a5-1", "rate_bps": 0.0}))]
pub struct CreateSession {
    /// The SAE that fetches keys with `enc_keys`.
    #[schema(min_length = 1)]
    pub master_sae: String,
    /// The SAE that fetches the same keys with `dec_keys`.
    #[schema(min_length = 1)]
    pub slave_sae: String,
    /// Key rate wanted, bit/s (0: best effort).
    #[serde(default)]
    #[schema(minimum = 0.0)]
    pub rate_bps: f64,
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "qkdni controller northbound API", description = "Topology, links, key supply sessions, relay routes and events of one QKDN."),
    paths(topology, links, list_sessions, create_session, get_session, delete_session, routes, events, transfers, set_generation, diagnosis, super::dashboard::create_login, super::figures::reports),
    components(schemas(Problem, super::dashboard::DashboardLogin, Diagnosis, Decision, Interworking, InterworkingRole, ForeignSae, CreateSession, Session, SessionEvent, SessionPath, SessionState, Topology, NodeState, WeightedHop, LinkState, ControllerEvent, TransferRecord, Generation, super::figures::ControllerReport, super::figures::ControlLayerReport, super::figures::DurationSummary, super::figures::PeerRoundTrips, crate::refusals::RefusalReport, crate::refusals::RefusalCount, crate::refusals::Refusal, crate::refusals::RefusalAlarm, crate::refusals::Point)),
    modifiers(&Security, &FixedArrays)
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// `[T; N]` fields are arrays of exactly N items, which the derived schemas leave out.
struct FixedArrays;

impl utoipa::Modify for FixedArrays {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(link))) = components.schemas.get_mut("LinkState") {
            if let Some(RefOr::T(Schema::Array(nodes))) = link.properties.get_mut("nodes") {
                nodes.min_items = Some(2);
                nodes.max_items = Some(2);
            }
        }
    }
}

/// The REST routes.
pub fn router(controller: Arc<Controller>) -> Router {
    let api = Router::new()
        .route("/api/v1/topology", get(topology))
        .route("/api/v1/links", get(links))
        .route("/api/v1/sessions", get(list_sessions).post(create_session))
        .route(
            "/api/v1/sessions/{id}",
            get(get_session).delete(delete_session),
        )
        .route("/api/v1/routes", get(routes))
        .route("/api/v1/events", get(events))
        .route("/api/v1/transfers", get(transfers))
        .route(
            "/api/v1/links/{id}/generation",
            axum::routing::put(set_generation),
        )
        .route("/api/v1/diagnoses", post(diagnosis))
        .route("/api/v1/reports", get(super::figures::reports))
        // inside authentication: only authenticated callers' changes are recorded
        .layer(middleware::from_fn_with_state(
            controller.audit.clone(),
            crate::audit::hooks::rest_changes,
        ))
        .layer(middleware::from_fn_with_state(
            controller.clone(),
            authenticate,
        ));
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"ready": true})) }),
        )
        .merge(super::ck::server::router())
        .merge(api)
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such resource") })
        .with_state(controller.clone())
        .merge(super::dashboard::router(controller))
}

/// The domain: nodes, links with live state, SAE locations.
#[utoipa::path(get, path = "/api/v1/topology",
    responses((status = 200, description = "The topology", body = Topology), Unauthorized))]
async fn topology(State(c): State<Arc<Controller>>) -> Json<Topology> {
    Json(c.topology().await)
}

/// QKD links with live state.
#[utoipa::path(get, path = "/api/v1/links",
    responses((status = 200, description = "The links", body = Vec<LinkState>), Unauthorized))]
async fn links(State(c): State<Arc<Controller>>) -> Json<Vec<LinkState>> {
    Json(c.topology().await.links.into_values().collect())
}

/// Every key supply session.
#[utoipa::path(get, path = "/api/v1/sessions",
    responses((status = 200, description = "The sessions", body = Vec<Session>), Unauthorized))]
async fn list_sessions(State(c): State<Arc<Controller>>) -> Json<Vec<Session>> {
    Json(c.sessions().await)
}

/// A JSON request body, or the problem with it (400, 413 or 415).
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Problem> {
    body.map(|Json(value)| value).map_err(|e| {
        let (status, kind) = match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            _ => (StatusCode::BAD_REQUEST, "invalid-request"),
        };
        Problem::new(status, kind, e.body_text())
    })
}

/// Creates a key supply session and installs its relay route on every KM of the path.
#[utoipa::path(post, path = "/api/v1/sessions", request_body = CreateSession,
    responses(
        (status = 201, description = "Created and routed", body = Session),
        (status = 400, description = "Malformed or invalid request", body = Problem, content_type = PROBLEM_JSON),
        Unauthorized,
        (status = 409, description = "No route with the rate wanted", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Request body too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Request body not `application/json`", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Unknown SAE", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "Installing the route on a KM failed", body = Problem, content_type = PROBLEM_JSON)))]
async fn create_session(
    State(c): State<Arc<Controller>>,
    body: Result<Json<CreateSession>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Session>), Problem> {
    let request = json_body(body)?;
    // run to completion even if the client goes away (no half-done route changes)
    let session = tokio::spawn(async move {
        c.create_session(&request.master_sae, &request.slave_sae, request.rate_bps)
            .await
    })
    .await
    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok((StatusCode::CREATED, Json(session)))
}

fn parse_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-session",
            format!("no session {id}"),
        )
    })
}

/// One session with its route and history.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", params(("id" = String, Path, description = "session id")),
    responses(
        (status = 200, description = "The session", body = Session),
        Unauthorized,
        (status = 404, description = "No such session", body = Problem, content_type = PROBLEM_JSON)))]
async fn get_session(
    State(c): State<Arc<Controller>>,
    Path(id): Path<String>,
) -> Result<Json<Session>, Problem> {
    let id = parse_id(&id)?;
    c.session(id)
        .await
        .map(Json)
        .ok_or_else(|| ControlError::UnknownSession(id).into())
}

/// Deletes a session; relay routes no other session needs are removed.
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", params(("id" = String, Path, description = "session id")),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        (status = 404, description = "No such session", body = Problem, content_type = PROBLEM_JSON)))]
async fn delete_session(
    State(c): State<Arc<Controller>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_id(&id)?;
    // run to completion even if the client goes away (no half-done route changes)
    tokio::spawn(async move { c.delete_session(id).await })
        .await
        .map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(StatusCode::NO_CONTENT)
}

/// Relay routes installed on each KM: node -> destination -> next hop.
#[utoipa::path(get, path = "/api/v1/routes",
    responses((status = 200, description = "Routes by node", body = BTreeMap<String, BTreeMap<String, String>>), Unauthorized))]
async fn routes(
    State(c): State<Arc<Controller>>,
) -> Json<BTreeMap<String, BTreeMap<String, String>>> {
    Json(
        c.topology()
            .await
            .nodes
            .into_iter()
            .map(|(id, n)| (id, n.routes))
            .collect(),
    )
}

/// Recent events (session changes, link faults, reroutes with their durations).
#[utoipa::path(get, path = "/api/v1/events",
    responses((status = 200, description = "The events, oldest first", body = Vec<ControllerEvent>), Unauthorized))]
async fn events(
    State(c): State<Arc<Controller>>,
    _: Option<Extension<PeerIdentity>>,
) -> Json<Vec<ControllerEvent>> {
    Json(c.events())
}

/// Key generation of a QKD link: running or paused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": false}))]
pub struct Generation {
    /// `false` pauses the link's QKD modules (`qkdl_enable` at both ends), `true` resumes.
    pub enabled: bool,
}

/// Pauses or resumes key generation on a QKD link of the domain (Y.3818 9.2, procedure 2:
/// the controller controls key generation through the KMs' NETCONF model).
#[utoipa::path(put, path = "/api/v1/links/{id}/generation", params(("id" = String, Path, description = "link id")),
    request_body = Generation,
    responses(
        (status = 204, description = "Done at both ends"),
        Unauthorized,
        (status = 400, description = "Malformed body", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such QKD link in the domain", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Request body too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Request body not `application/json`", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "A KM did not take the change", body = Problem, content_type = PROBLEM_JSON)))]
async fn set_generation(
    State(c): State<Arc<Controller>>,
    Path(id): Path<String>,
    body: Result<Json<Generation>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, Problem> {
    let generation = json_body(body)?;
    // run to completion even if the client goes away
    tokio::spawn(async move { c.set_generation(&id, generation.enabled).await })
        .await
        .map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(StatusCode::NO_CONTENT)
}

/// Transfer key life-cycle records: the key transfers through interworking nodes that this
/// domain's IWN KMs reported (Y.3818 9.2, procedure 1), kept until the keys expire.
#[utoipa::path(get, path = "/api/v1/transfers",
    responses((status = 200, description = "The records, oldest first", body = Vec<TransferRecord>), Unauthorized))]
async fn transfers(State(c): State<Arc<Controller>>) -> Json<Vec<TransferRecord>> {
    Json(c.transfers.records())
}

/// A QCLM's diagnosis of a fault (Y.3818 9.1, procedure 3).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    /// Who diagnosed (e.g. `QCLM-A`).
    pub source: String,
    /// `interworking-relay-failure`.
    pub kind: String,
    #[serde(default)]
    pub relay_id: Option<Uuid>,
    /// The relay's destination node, when known.
    #[serde(default)]
    pub destination: Option<String>,
    /// The domain whose KM reported the failure.
    #[serde(default)]
    pub reported_by: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// What the controller decided on a diagnosis.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    pub decision: String,
}

/// Takes a diagnosis from the domain's QCLM: the interworking sessions concerned are re-agreed
/// with the peer domain (or, for segments of the peer's sessions, reported to it).
#[utoipa::path(post, path = "/api/v1/diagnoses", request_body = Diagnosis,
    responses((status = 202, description = "The decision", body = Decision),
        (status = 400, description = "Malformed request or unknown diagnosis kind", body = Problem, content_type = PROBLEM_JSON),
        Unauthorized,
        (status = 413, description = "Request body too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Request body not `application/json`", body = Problem, content_type = PROBLEM_JSON)))]
async fn diagnosis(
    State(c): State<Arc<Controller>>,
    body: Result<Json<Diagnosis>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Decision>), Problem> {
    let d = json_body(body)?;
    if d.kind != "interworking-relay-failure" {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            format!("unknown diagnosis kind {}", d.kind),
        ));
    }
    c.event(
        "qclm-diagnosis",
        format!(
            "{}: {} (relay {:?} to {:?}, reported by {:?}): {}",
            d.source, d.kind, d.relay_id, d.destination, d.reported_by, d.reason
        ),
        None,
        None,
    );
    // to completion even if the QCLM gives up waiting
    let detail = format!("{} from {}", d.kind, d.source);
    let decision =
        tokio::spawn(async move { c.diagnosis(d.destination.as_deref(), &detail).await })
            .await
            .map_err(|e| {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
    Ok((StatusCode::ACCEPTED, Json(Decision { decision })))
}

/// Serves the API until the task is dropped.
pub async fn serve(controller: Arc<Controller>) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(controller.config.rest_listen).await?;
    serve_on(controller, listener).await
}

/// Serves the API on a bound listener until the task is dropped.
pub async fn serve_on(
    controller: Arc<Controller>,
    listener: tokio::net::TcpListener,
) -> Result<(), std::io::Error> {
    let config =
        crate::tls::server_config(&controller.config.tls).map_err(std::io::Error::other)?;
    tracing::info!(rest = %controller.config.rest_listen, "controller REST API ready");
    let issuers =
        crate::tls::Issuers::load(&controller.config.tls).map_err(std::io::Error::other)?;
    let limits = controller.config.limits.rest_listener.clone();
    let watch = crate::https::Watch::of(controller.refusals.clone(), crate::refusals::Point::Rest);
    crate::https::serve_https_watched(
        listener,
        config,
        issuers,
        router(controller),
        limits,
        Some(watch),
    )
    .await;
    Ok(())
}
