//! Cxi, the reference point between the controllers of two QKDNs (Y.3818 6.1): versioned
//! JSON messages over HTTPS with mutual TLS between the domains' CAs.
//!
//! - `GET /cxi/v1/abstract-topology`: what a domain's exposure policy shares: border nodes
//!   and their Qx links, and (when allowed) which SAEs are reachable from which border node
//!   with what hop count and key rate. Never internal links.
//! - Two-phase route agreement, coordinated by the domain of the master SAE:
//!   `POST /cxi/v1/transactions` (prepare: the peer computes and validates its segment and
//!   votes), `POST /cxi/v1/transactions/{id}/commit` (the peer installs it on its KMs),
//!   `POST /cxi/v1/transactions/{id}/abort` (dropped, or undone when already committed).
//! - `POST /cxi/v1/status`: status sharing (a fault on a segment, a border change).
//! - `DELETE /cxi/v1/sessions/{id}`: the session ended at its origin.
//!
//! Every body carries `version` (1); unknown fields, other versions and callers other than the
//! configured peer controller are refused with RFC 9457 problem details. The schemas are in
//! `schemas/cxi/v1/openapi.json` (generated from these types; a test keeps them equal).
//!
//! - [`server`] — the Cxi server (peer controllers only);
//! - [`coordinator`] — the coordinating domain's part: route agreement (two-phase) with the
//!   peer, the abstract topology shared with it, status sharing;
//! - [`segments`] — the receiving domain's segments of the peer's sessions, QCLM diagnoses;
//! - [`peers`] — the peer domains as known from Cxi (abstract topology, status), and the
//!   push of this domain's abstract topology.

pub mod coordinator;
pub mod live;
pub mod peers;
pub mod segments;
pub mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::control::config::CxiPeer;
use crate::tls::{self, TlsFiles};

/// The Cxi message version this controller speaks.
pub const CXI_VERSION: u32 = 1;
/// Largest answer read from a peer controller.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What a domain shares about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbstractTopology {
    pub version: u32,
    pub domain: String,
    pub border_nodes: Vec<BorderNode>,
    /// Empty unless the policy shares SAE reachability.
    pub reachability: Vec<SaeReach>,
}

/// A gateway node at the border and its Qx links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BorderNode {
    pub node: String,
    pub qx_links: Vec<QxLinkState>,
}

/// A Qx link as its domain sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QxLinkState {
    pub id: String,
    /// The GWN at the other end (in the peer domain).
    pub peer_node: String,
    pub up: bool,
    pub rate_bps: f64,
}

/// Where an SAE is and from which border nodes it is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaeReach {
    pub sae: String,
    /// The node whose KM serves it (the relay's destination).
    pub node: String,
    pub via: Vec<BorderReach>,
}

/// Reachability of a node from one border node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BorderReach {
    pub border_node: String,
    /// Relay hops inside the domain (when the policy shares key rates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<u32>,
    /// Key rate of the route (bit/s; when the policy shares key rates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<f64>,
}

/// Phase 1: the coordinator proposes a route crossing `qx_link` into the peer at
/// `entry_gateway`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    pub version: u32,
    pub transaction: Uuid,
    pub session: Uuid,
    pub origin_domain: String,
    pub master_sae: String,
    pub slave_sae: String,
    /// KM of the master SAE (the relay's origin).
    pub origin_km: String,
    /// The coordinator's GWN.
    pub peer_gateway: String,
    /// The receiving domain's GWN, where its segment starts.
    pub entry_gateway: String,
    pub qx_link: String,
    pub rate_bps: f64,
    /// Why (new session, fault, ...).
    pub reason: String,
    /// The session's QoS class (one the receiving domain exposes to the coordinator);
    /// absent from peers that predate QoS classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
}

/// A vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VoteKind {
    Prepared,
    Refused,
}

/// The answer to a prepare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    pub version: u32,
    pub transaction: Uuid,
    pub vote: VoteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hops of the prepared segment (not its nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_hops: Option<u32>,
}

/// Outcome of a commit or an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Committed,
    Aborted,
}

/// The answer to a commit or an abort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionResult {
    pub version: u32,
    pub transaction: Uuid,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a status report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StatusKind {
    /// A fault on the reporter's segment of these sessions: the coordinator should reroute.
    SegmentFault,
    /// A Qx link changed state at the reporter's GWN.
    BorderChange,
    /// `sessions` is the complete list of the reporter's interworking sessions with the
    /// receiver: segments of other sessions are left over (e.g. from a crash between the
    /// receiver's commit and the reporter's save) and go.
    Sessions,
}

/// Status shared with the peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub version: u32,
    pub domain: String,
    pub kind: StatusKind,
    #[serde(default)]
    pub sessions: Vec<Uuid>,
    pub detail: String,
    /// With `border-change`: the reporter's abstract topology as it now is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<AbstractTopology>,
}

/// Cxi client errors.
#[derive(Debug, thiserror::Error)]
pub enum CxiError {
    #[error("peer controller of {domain} unreachable: {reason}")]
    Unreachable { domain: String, reason: String },
    #[error("peer controller of {domain} answered {status}: {detail}")]
    Refused {
        domain: String,
        status: u16,
        detail: String,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The answer's signature is missing or does not hold (non-repudiation): it agrees to
    /// nothing.
    #[error("answer of the peer controller of {domain} not proven: {reason}")]
    Unproven { domain: String, reason: String },
    #[error("signing Cxi messages: {0}")]
    Signing(#[from] crate::nonrepudiation::NrError),
}

/// A client of one peer controller.
#[derive(Clone)]
pub struct CxiClient {
    pub peer: CxiPeer,
    http: reqwest::Client,
    /// Signs the requests, checks and keeps the signed answers.
    signing: crate::nonrepudiation::http::ClientPoint,
    /// Round trips to the peer, for the manager's reports ([`crate::control::figures`]).
    round_trips: crate::control::figures::RoundTrips,
    /// The controller's histogram of Cxi round trips, when it exposes one.
    histogram: Option<crate::metrics::Durations>,
}

impl CxiClient {
    /// A client presenting this controller's certificate and trusting only the peer
    /// domain's CA.
    pub fn new(peer: CxiPeer, files: &TlsFiles) -> Result<Self, CxiError> {
        Ok(Self {
            http: tls::https_client_to_peer(files, &peer.domain, Duration::from_secs(10))?,
            signing: crate::nonrepudiation::http::ClientPoint {
                notary: crate::nonrepudiation::for_tls(files)?,
                point: "cxi",
                peer: peer.domain.clone(),
                peer_identity: tls::foreign_identity(&peer.controller, &peer.domain),
            },
            peer,
            round_trips: Default::default(),
            histogram: None,
        })
    }

    /// This client with its round trips also observed in `histogram` (labelled with the
    /// peer domain and the outcome).
    pub fn observed_in(mut self, histogram: crate::metrics::Durations) -> Self {
        self.histogram = Some(histogram);
        self
    }

    /// The round trips of this client (and its clones) to the peer.
    pub fn round_trips(&self) -> &crate::control::figures::Recent {
        &self.round_trips
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        accept: &[u16],
    ) -> Result<T, CxiError> {
        let (status, body) = self.exchange(request).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if !accept.contains(&status) {
            return Err(CxiError::Refused {
                domain: self.peer.domain.clone(),
                status,
                detail: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| CxiError::Refused {
            domain: self.peer.domain.clone(),
            status,
            detail: format!("malformed answer: {e}"),
        })
    }

    /// Sends a request and reads its answer (up to a bound, whatever it announces): the
    /// signature step of every Cxi message this controller sends (`agreement`), see
    /// [`crate::nonrepudiation::http::ClientPoint::send`].
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, axum::body::Bytes), CxiError> {
        let started = std::time::Instant::now();
        let answer = self.exchange_untimed(request).await;
        // an answer of any status is a round trip; none (or one not proven) is a failure
        let answered = answer.is_ok() || matches!(answer, Err(CxiError::Refused { .. }));
        let seconds = started.elapsed().as_secs_f64();
        self.round_trips.record(answered, seconds);
        if let Some(histogram) = &self.histogram {
            let outcome = if answered { "answered" } else { "failed" };
            histogram
                .get_or_create(&crate::metrics::labels([
                    ("peer", self.peer.domain.as_str()),
                    ("outcome", outcome),
                ]))
                .observe(seconds);
        }
        answer
    }

    async fn exchange_untimed(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, axum::body::Bytes), CxiError> {
        let unreachable = |reason: String| CxiError::Unreachable {
            domain: self.peer.domain.clone(),
            reason,
        };
        let request = request.build().map_err(|e| unreachable(e.to_string()))?;
        let body = request
            .body()
            .and_then(|b| b.as_bytes())
            .unwrap_or_default();
        let Some(agreement) = agreement(request.method(), request.url().path(), body) else {
            let mut response = self
                .http
                .execute(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| unreachable(e.to_string()))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ANSWER_BYTES {
                    return Err(CxiError::Refused {
                        domain: self.peer.domain.clone(),
                        status,
                        detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                    });
                }
            }
            return Ok((status, body.into()));
        };
        use crate::nonrepudiation::http::ExchangeError;
        match self.signing.send(&self.http, request, &agreement).await {
            Ok(answer) => Ok((answer.status, answer.body)),
            Err(ExchangeError::Unreachable(error)) => Err(unreachable(error.to_string())),
            Err(ExchangeError::TooLarge) => Err(CxiError::Refused {
                domain: self.peer.domain.clone(),
                status: 200,
                detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            }),
            Err(ExchangeError::Signature(error)) => {
                tracing::warn!(peer = %self.peer.domain, %error, "Cxi answer not proven");
                Err(CxiError::Unproven {
                    domain: self.peer.domain.clone(),
                    reason: error.to_string(),
                })
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.peer.url.trim_end_matches('/'))
    }

    /// The peer's abstract topology.
    pub async fn abstract_topology(&self) -> Result<AbstractTopology, CxiError> {
        self.call(self.http.get(self.url("/cxi/v1/abstract-topology")), &[200])
            .await
    }

    /// Phase 1.
    pub async fn prepare(&self, request: &PrepareRequest) -> Result<Vote, CxiError> {
        self.call(
            self.http
                .post(self.url("/cxi/v1/transactions"))
                .json(request),
            &[200, 409],
        )
        .await
    }

    /// Phase 2.
    pub async fn commit(&self, transaction: Uuid) -> Result<TransactionResult, CxiError> {
        self.call(
            self.http
                .post(self.url(&format!("/cxi/v1/transactions/{transaction}/commit"))),
            &[200, 409],
        )
        .await
    }

    /// Abort (or undo) a transaction.
    pub async fn abort(&self, transaction: Uuid) -> Result<TransactionResult, CxiError> {
        self.call(
            self.http
                .post(self.url(&format!("/cxi/v1/transactions/{transaction}/abort"))),
            &[200],
        )
        .await
    }

    /// Shares status.
    pub async fn status(&self, report: &StatusReport) -> Result<serde_json::Value, CxiError> {
        self.call(
            self.http.post(self.url("/cxi/v1/status")).json(report),
            &[202],
        )
        .await
    }

    /// Ends a session at the peer.
    pub async fn delete_session(&self, session: Uuid) -> Result<(), CxiError> {
        let (status, body) = self
            .exchange(
                self.http
                    .delete(self.url(&format!("/cxi/v1/sessions/{session}"))),
            )
            .await?;
        match status {
            204 | 404 => Ok(()),
            status => Err(CxiError::Refused {
                domain: self.peer.domain.clone(),
                status,
                detail: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }
}

/// The Cxi messages as an OpenAPI document (their JSON Schemas), committed as
/// `schemas/cxi/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "qkdni Cxi (controller to controller, ITU-T Y.3818)",
        version = "1"
    ),
    components(schemas(
        AbstractTopology,
        BorderNode,
        QxLinkState,
        SaeReach,
        BorderReach,
        PrepareRequest,
        Vote,
        VoteKind,
        TransactionResult,
        Outcome,
        StatusReport,
        StatusKind
    ))
)]
pub struct CxiSchemas;

/// The committed schema document.
pub fn schemas_json() -> String {
    use utoipa::OpenApi;
    let mut text = CxiSchemas::openapi()
        .to_pretty_json()
        .expect("serializable schemas");
    text.push('\n');
    text
}

/// The agreement a Cxi message belongs to (its evidence index), `None` for a request that is
/// not signed (reads). Prepare, commit and abort: `transaction <id>`; status: `status
/// <kind> <first session>`; the end of a session: `session <id>`.
pub fn agreement(method: &reqwest::Method, path: &str, body: &[u8]) -> Option<String> {
    if method == reqwest::Method::GET || method == reqwest::Method::HEAD {
        return None;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let field = |name: &str| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get(name).cloned())
    };
    Some(match segments.as_slice() {
        ["cxi", "v1", "transactions"] => format!(
            "transaction {}",
            field("transaction")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "(unreadable)".into())
        ),
        ["cxi", "v1", "transactions", id, _] => format!("transaction {id}"),
        ["cxi", "v1", "sessions", id] => format!("session {id}"),
        ["cxi", "v1", "status"] => {
            let kind = field("kind").and_then(|v| v.as_str().map(str::to_owned));
            let first = field("sessions").and_then(|v| {
                v.as_array()
                    .and_then(|a| a.first())
                    .and_then(|s| s.as_str().map(str::to_owned))
            });
            format!(
                "status {} {}",
                kind.as_deref().unwrap_or("?"),
                first.as_deref().unwrap_or("-")
            )
        }
        _ => format!("request {path}"),
    })
}

/// A refusing vote.
pub fn refusal(transaction: Uuid, reason: String) -> Vote {
    Vote {
        version: CXI_VERSION,
        transaction,
        vote: VoteKind::Refused,
        reason: Some(reason),
        segment_hops: None,
    }
}

/// An aborted transaction's result.
pub fn aborted(transaction: Uuid, reason: Option<String>) -> TransactionResult {
    TransactionResult {
        version: CXI_VERSION,
        transaction,
        outcome: Outcome::Aborted,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schemas_match_the_messages() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/cxi/v1/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed != schemas_json() && std::env::var_os("QKDNI_UPDATE_SCHEMAS").is_some() {
            std::fs::write(path, schemas_json()).unwrap();
            return;
        }
        assert_eq!(
            committed,
            schemas_json(),
            "schemas/cxi/v1/openapi.json is stale: rerun with QKDNI_UPDATE_SCHEMAS=1"
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let ok = serde_json::json!({"version": 1, "domain": "B", "kind": "segment-fault", "sessions": [], "detail": "x"});
        assert!(serde_json::from_value::<StatusReport>(ok.clone()).is_ok());
        let mut extra = ok.clone();
        extra["sneaky"] = serde_json::json!(1);
        assert!(serde_json::from_value::<StatusReport>(extra).is_err());
        let mut kind = ok;
        kind["kind"] = serde_json::json!("reboot");
        assert!(serde_json::from_value::<StatusReport>(kind).is_err());
    }
}
