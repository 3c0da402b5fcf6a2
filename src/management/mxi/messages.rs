//! The messages two QKDN managers exchange over Mxi (Y.3818 6.1, 9.1 item 3): interworking
//! fault reports and report packs (performance and security), JSON, versioned.
//!
//! Every message has `"version"` (only [`MXI_VERSION`] so far) and `"kind"`. A receiver
//! reads both before the rest, so that a message of a version it does not know is refused
//! as such ([`MessageError::UnsupportedVersion`]) rather than as malformed. The JSON
//! Schemas of the messages are `schemas/mxi/v1/*.json` (generated from these types, see
//! [`super::schemas`]).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Mxi message format version this manager speaks.
pub const MXI_VERSION: u32 = 1;

/// Every version this manager accepts.
pub const SUPPORTED_VERSIONS: &[u32] = &[MXI_VERSION];

/// The `kind` of a fault report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FaultReportKind {
    #[serde(rename = "fault-report")]
    FaultReport,
}

/// The `kind` of a report pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReportPackKind {
    #[serde(rename = "report-pack")]
    ReportPack,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FaultType {
    /// A key relay toward a node of another QKDN failed (Y.3818 9.1 item 3).
    InterworkingRelayFailure,
}

impl FaultType {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            FaultType::InterworkingRelayFailure => "interworking-relay-failure",
        }
    }
}

/// An interworking fault report, from one domain's XLMO to the other's
/// (`POST /mxi/v1/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Mxi fault report")]
pub struct FaultReport {
    /// Mxi message format version.
    #[schemars(extend("const" = 1))]
    pub version: u32,
    /// Message kind.
    pub kind: FaultReportKind,
    /// Message id (also in both managers' event logs).
    pub id: Uuid,
    /// When the reporting manager learned of the fault (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub time: String,
    /// The QKDN whose KMLM saw the fault; must be the sender's domain.
    pub domain: String,
    /// What failed.
    pub fault: FaultType,
    /// The KM node that reported the failure.
    pub node: String,
    /// The relay operation, when the KM named one.
    pub relay_id: Option<Uuid>,
    /// The node the keys were relayed to.
    pub destination: String,
    /// Why the relay failed, as the KM put it.
    pub reason: String,
}

/// Performance of one end of a QKD link, as the QLM read it from the end's KM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkPerformance {
    /// The link id.
    pub link_id: String,
    /// The node at this end.
    pub node: String,
    /// The node at the other end.
    pub peer: String,
    /// Operationally up at this end.
    pub up: bool,
    /// Secret key rate, bit/s.
    pub secret_key_rate_bps: f64,
    /// Key blocks (256 bits) this end may allocate.
    pub own_blocks: u64,
    /// Capacity of the link's key pool, in blocks.
    pub capacity_blocks: u64,
}

/// The quantum layer manager's part of a performance report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantumLayerReport {
    /// Every link end read.
    pub links: Vec<LinkPerformance>,
    /// KM agents that could not be read.
    pub unreachable_agents: Vec<String>,
}

/// The key management layer manager's part of a performance report: notifications seen
/// since the manager started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyManagementReport {
    /// `link-status-change` notifications.
    pub link_status_changes: u64,
    /// `low-key-alarm` notifications.
    pub low_key_alarms: u64,
    /// `relay-failure` notifications.
    pub relay_failures: u64,
    /// Of those, relays toward a node of another QKDN.
    pub interworking_relay_failures: u64,
}

/// Performance of one domain, layer by layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerformanceReport {
    /// From the QLM.
    pub quantum: QuantumLayerReport,
    /// From the KMLM.
    pub key_management: KeyManagementReport,
    /// From the QCLM: the controller's route install, reroute and Cxi round-trip figures,
    /// as read at packing time. Absent when the domain has no controller (distributed
    /// control: the manager talks to a speaker KM), when it could not be read, and in
    /// packs of older managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_layer: Option<crate::control::figures::ControlLayerReport>,
}

/// Security information of one domain: counts since its manager started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityReport {
    /// Relay failures the KMs reported as failed message authentication.
    pub relay_authentication_failures: u64,
    /// Requests to the manager's REST API without valid credentials.
    pub rest_authentication_failures: u64,
    /// Mxi messages refused for the client's identity or a forged domain.
    pub mxi_rejected: u64,
    /// Mxi messages refused as malformed or of an unsupported version.
    pub mxi_malformed: u64,
    /// Failed NETCONF logins at the domain's KMs (absent from packs of older managers).
    #[serde(default)]
    pub netconf_authentication_failures: u64,
    /// Refusal threshold alarms the domain's KMs raised (ETSI 014, KMA, Kxi, NETCONF).
    #[serde(default)]
    pub km_refusal_alarms: u64,
    /// Refusals at the manager's reference points (Mxi, REST, NETCONF): counts by point
    /// and reason, the recent ones with their sources, alarms.
    #[serde(default)]
    pub refusals: crate::refusals::RefusalReport,
    /// The same of the domain's controller (Cxi, REST, NETCONF), as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_refusals: Option<crate::refusals::RefusalReport>,
}

/// Performance and security reports of one domain packed by its XLMO for the other's
/// (`POST /mxi/v1/reports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Mxi report pack")]
pub struct ReportPack {
    /// Mxi message format version.
    #[schemars(extend("const" = 1))]
    pub version: u32,
    /// Message kind.
    pub kind: ReportPackKind,
    /// Message id.
    pub id: Uuid,
    /// When the pack was made (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub time: String,
    /// The QKDN reported on; must be the sender's domain.
    pub domain: String,
    /// Seconds between two packs of this sender.
    pub period_seconds: u64,
    /// Performance, layer by layer.
    pub performance: PerformanceReport,
    /// Security information.
    pub security: SecurityReport,
}

/// The `kind` of a usage summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UsageSummaryKind {
    #[serde(rename = "usage-summary")]
    UsageSummary,
}

/// Which way the keys of a usage entry went, seen from the sender of the summary.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum UsageDirection {
    /// Keys supplied to a master SAE of the sender's domain for a slave SAE of the
    /// receiver's domain.
    Outbound,
    /// Keys that arrived in the sender's domain for its slave SAE from a master SAE of the
    /// receiver's domain.
    Inbound,
}

/// The keys of one SAE pair in one direction in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEntry {
    pub direction: UsageDirection,
    /// The master SAE (the caller of Get key).
    pub master_sae: String,
    /// The slave SAE.
    pub slave_sae: String,
    /// Distinct keys.
    pub keys: u64,
    /// Their bits.
    pub bits: u64,
    /// SHA-256 of the keys' IDs (16 bytes each) sorted, hex.
    #[schemars(extend("pattern" = "^[0-9a-f]{64}$"))]
    pub key_id_digest: String,
    /// Inbound keys the slave SAE has not fetched yet and that have not expired.
    pub pending: u64,
}

/// A domain's usage of key supply toward and from the peer domain in one closed period,
/// from one manager to the other (`POST /mxi/v1/usage-summaries`) for reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Mxi usage summary")]
pub struct UsageSummary {
    /// Mxi message format version.
    #[schemars(extend("const" = 1))]
    pub version: u32,
    /// Message kind.
    pub kind: UsageSummaryKind,
    /// Message id.
    pub id: Uuid,
    /// When the summary was made (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub time: String,
    /// The QKDN whose usage this is; must be the sender's domain.
    pub domain: String,
    /// Start of the period, Unix milliseconds (a multiple of the period).
    pub period_start_ms: u64,
    /// Length of the period, seconds (the same in both domains).
    pub period_seconds: u64,
    /// The keys per SAE pair and direction (pairs with no key are absent).
    pub entries: Vec<UsageEntry>,
}

impl MxiMessage for UsageSummary {
    const KIND: &'static str = "usage-summary";
    const PATH: &'static str = "/mxi/v1/usage-summaries";
    fn domain(&self) -> &str {
        &self.domain
    }
    fn id(&self) -> Uuid {
        self.id
    }
}

/// Where the reconciliation of a period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReconciliationState {
    /// The period is not closed yet at the answering domain.
    Open,
    /// Keys of the period still wait for their slave SAE: nothing to compare yet.
    InFlight,
    /// Both domains agree key for key.
    Reconciled,
    /// The domains disagree (counts or key-ID digests): an accounting alarm.
    Mismatch,
}

/// The answer to a usage summary: the receiver's verdict and its own summary of the same
/// period (absent while the period is open there), so both managers reconcile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReply {
    /// The summary answered.
    pub id: Uuid,
    pub state: ReconciliationState,
    /// What differs, for people.
    pub mismatches: Vec<String>,
    /// The receiver's summary of the period.
    pub summary: Option<UsageSummary>,
}

/// A message of Mxi.
pub trait MxiMessage: Serialize + DeserializeOwned {
    /// Its `kind`.
    const KIND: &'static str;
    /// The Mxi resource it is posted to.
    const PATH: &'static str;
    /// The domain it claims to come from.
    fn domain(&self) -> &str;
    /// Its id.
    fn id(&self) -> Uuid;
}

impl MxiMessage for FaultReport {
    const KIND: &'static str = "fault-report";
    const PATH: &'static str = "/mxi/v1/faults";
    fn domain(&self) -> &str {
        &self.domain
    }
    fn id(&self) -> Uuid {
        self.id
    }
}

impl MxiMessage for ReportPack {
    const KIND: &'static str = "report-pack";
    const PATH: &'static str = "/mxi/v1/reports";
    fn domain(&self) -> &str {
        &self.domain
    }
    fn id(&self) -> Uuid {
        self.id
    }
}

/// Why a message body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported Mxi message version {0} (supported: {SUPPORTED_VERSIONS:?})")]
    UnsupportedVersion(String),
    #[error("message kind {found:?} where {expected:?} was expected")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
}

/// Reads a message of kind `T`: its version first, then its kind, then the rest.
pub fn parse<T: MxiMessage>(body: &[u8]) -> Result<T, MessageError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| MessageError::Malformed("not a JSON object".into()))?;
    let version = object
        .get("version")
        .ok_or_else(|| MessageError::Malformed("no \"version\"".into()))?;
    if !version
        .as_u64()
        .is_some_and(|v| SUPPORTED_VERSIONS.iter().any(|s| u64::from(*s) == v))
    {
        return Err(MessageError::UnsupportedVersion(version.to_string()));
    }
    match object.get("kind").and_then(|k| k.as_str()) {
        Some(kind) if kind == T::KIND => {}
        other => {
            return Err(MessageError::WrongKind {
                expected: T::KIND,
                found: other.map(str::to_owned).unwrap_or_default(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| MessageError::Malformed(e.to_string()))
}

/// The versions a manager announces on `GET /mxi/v1/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// Supported Mxi message versions.
    pub versions: Vec<u32>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fault() -> FaultReport {
        FaultReport {
            version: MXI_VERSION,
            kind: FaultReportKind::FaultReport,
            id: Uuid::new_v4(),
            time: "2026-01-01T00:00:00Z".into(),
            domain: "A".into(),
            fault: FaultType::InterworkingRelayFailure,
            node: "ga1".into(),
            relay_id: Some(Uuid::new_v4()),
            destination: "b2".into(),
            reason: "next hop gb1 unreachable".into(),
        }
    }

    pub(crate) fn pack() -> ReportPack {
        ReportPack {
            version: MXI_VERSION,
            kind: ReportPackKind::ReportPack,
            id: Uuid::new_v4(),
            time: "2026-01-01T00:00:00Z".into(),
            domain: "A".into(),
            period_seconds: 5,
            performance: PerformanceReport {
                quantum: QuantumLayerReport {
                    links: vec![LinkPerformance {
                        link_id: "a1-ga1".into(),
                        node: "a1".into(),
                        peer: "ga1".into(),
                        up: true,
                        secret_key_rate_bps: 1000.0,
                        own_blocks: 12,
                        capacity_blocks: 64,
                    }],
                    unreachable_agents: vec!["a2".into()],
                },
                key_management: KeyManagementReport {
                    relay_failures: 2,
                    interworking_relay_failures: 1,
                    ..Default::default()
                },
                control_layer: None,
            },
            security: SecurityReport {
                mxi_rejected: 3,
                ..Default::default()
            },
        }
    }

    #[test]
    fn messages_round_trip() {
        let fault = fault();
        let json = serde_json::to_vec(&fault).unwrap();
        assert_eq!(parse::<FaultReport>(&json).unwrap(), fault);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["kind"], "fault-report");
        assert_eq!(value["fault"], "interworking-relay-failure");
        assert_eq!(value["version"], 1);
        let pack = pack();
        let json = serde_json::to_vec(&pack).unwrap();
        assert_eq!(parse::<ReportPack>(&json).unwrap(), pack);
    }

    #[test]
    fn control_layer_figures_are_optional_and_valid_against_the_published_schema() {
        use crate::control::figures::{ControlLayerReport, DurationSummary, PeerRoundTrips};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/mxi/v1/report-pack.json"
        );
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        // a pack of an older manager (or of a distributed domain): no figures, no
        // controller refusals
        let old = pack();
        let json = serde_json::to_value(&old).unwrap();
        assert!(json["performance"].get("control_layer").is_none());
        assert!(json["security"].get("controller_refusals").is_none());
        assert!(validator.is_valid(&json), "{json}");
        assert_eq!(
            parse::<ReportPack>(&serde_json::to_vec(&json).unwrap()).unwrap(),
            old
        );
        // with the controller's figures and refusals
        let figure = DurationSummary {
            count: 3,
            failed: 1,
            samples: 3,
            mean_ms: Some(12.5),
            p50_ms: Some(11.0),
            p95_ms: Some(20.0),
            max_ms: Some(20.0),
        };
        let refusals = crate::refusals::Refusals::default();
        refusals.record(
            crate::refusals::Point::Cxi,
            "not-a-peer",
            crate::refusals::Source::new([127, 0, 0, 1].into(), Some("sae-a1-1".into())),
            "403 not the peer controller",
        );
        let mut new = pack();
        new.performance.control_layer = Some(ControlLayerReport {
            route_installs: figure.clone(),
            reroutes: DurationSummary::default(),
            cxi_round_trips: vec![PeerRoundTrips {
                domain: "B".into(),
                round_trips: figure,
            }],
        });
        new.security.controller_refusals = Some(refusals.report());
        let json = serde_json::to_value(&new).unwrap();
        assert!(validator.is_valid(&json), "{json}");
        assert_eq!(
            parse::<ReportPack>(&serde_json::to_vec(&json).unwrap()).unwrap(),
            new
        );
        // and the schema holds the figures to their form
        let mut bad = json.clone();
        bad["performance"]["control_layer"]["route_installs"]["count"] = (-1).into();
        assert!(!validator.is_valid(&bad));
        let mut bad = json;
        bad["performance"]["control_layer"]["surprise"] = true.into();
        assert!(!validator.is_valid(&bad));
    }

    #[test]
    fn unknown_versions_and_kinds_are_refused() {
        let mut value = serde_json::to_value(fault()).unwrap();
        value["version"] = 2.into();
        let body = serde_json::to_vec(&value).unwrap();
        assert_eq!(
            parse::<FaultReport>(&body),
            Err(MessageError::UnsupportedVersion("2".into()))
        );
        value["version"] = "1".into();
        let body = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            parse::<FaultReport>(&body),
            Err(MessageError::UnsupportedVersion(_))
        ));
        let body = serde_json::to_vec(&pack()).unwrap();
        assert!(matches!(
            parse::<FaultReport>(&body),
            Err(MessageError::WrongKind { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [&b"not json"[..], b"[1]", br#"{"kind":"fault-report"}"#] {
            assert!(matches!(
                parse::<FaultReport>(body),
                Err(MessageError::Malformed(_))
            ));
        }
        let mut value = serde_json::to_value(fault()).unwrap();
        value["extra"] = true.into();
        let body = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            parse::<FaultReport>(&body),
            Err(MessageError::Malformed(_))
        ));
        value.as_object_mut().unwrap().remove("extra");
        value.as_object_mut().unwrap().remove("destination");
        let body = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            parse::<FaultReport>(&body),
            Err(MessageError::Malformed(_))
        ));
    }
}
