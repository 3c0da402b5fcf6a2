//! The cross-layer management orchestrator (XLMO), Y.3818 9.1 item 3:
//! - an interworking relay failure from the KMLM (destination outside the domain) goes to
//!   the peer domain's XLMO over Mxi, and its diagnosis to this domain's QCLM;
//! - a fault report from the peer XLMO becomes a diagnosis for this domain's QCLM too;
//! - every `report_seconds`, the layers' performance reports (QLM, KMLM) and the security
//!   counts are packed into one report pack for the peer XLMO.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use super::config::ManagerConfig;
use super::events::{self, Refs};
use super::kmlm::RelayFailure;
use super::mxi::messages::{
    FaultReport, FaultReportKind, FaultType, MxiMessage, PerformanceReport, ReportPack,
    ReportPackKind, MXI_VERSION,
};
use super::mxi::{MxiClient, SendError};
use super::qclm::Diagnosis;
use super::{ManagementError, Manager};
use crate::netconf::server::now_rfc3339;

/// Fault report ids remembered to drop duplicates (a retried send that had arrived).
const SEEN_IDS: usize = 1000;

/// Attempts to send a fault report.
const FAULT_ATTEMPTS: u32 = 3;

/// Where a relay failure belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// Toward a node of this domain: the domain's controller handles it.
    Local,
    /// Toward a node of another QKDN: shared with the peer manager.
    Interworking,
}

/// Classifies a relay failure by its destination.
pub fn classify(config: &ManagerConfig, failure: &RelayFailure) -> FaultScope {
    if config.is_own_node(&failure.destination) {
        FaultScope::Local
    } else {
        FaultScope::Interworking
    }
}

/// The last report packs sent to and received from the peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatestReports {
    /// The last pack this manager sent.
    pub sent: Option<ReportPack>,
    /// The last pack the peer sent.
    pub received: Option<ReportPack>,
}

/// The XLMO of one domain.
pub struct Xlmo {
    mxi: MxiClient,
    latest: Mutex<LatestReports>,
    seen: Mutex<VecDeque<Uuid>>,
    /// Whether the last report pack failed to reach the peer (log a failure once).
    reports_failing: AtomicBool,
}

impl Xlmo {
    /// The XLMO of `config`'s domain.
    pub fn new(config: &ManagerConfig) -> Result<Self, ManagementError> {
        Ok(Self {
            mxi: MxiClient::new(config)?,
            latest: Mutex::new(LatestReports::default()),
            seen: Mutex::new(VecDeque::new()),
            reports_failing: AtomicBool::new(false),
        })
    }

    /// The Mxi client toward the peer manager.
    pub fn mxi(&self) -> &MxiClient {
        &self.mxi
    }

    /// The fault report of an interworking relay failure seen in this domain.
    pub fn fault_report(config: &ManagerConfig, failure: &RelayFailure) -> FaultReport {
        FaultReport {
            version: MXI_VERSION,
            kind: FaultReportKind::FaultReport,
            id: Uuid::new_v4(),
            time: now_rfc3339(),
            domain: config.domain.clone(),
            fault: FaultType::InterworkingRelayFailure,
            node: failure.node.clone(),
            relay_id: failure.relay_id,
            destination: failure.destination.clone(),
            reason: failure.reason.clone(),
        }
    }

    /// Handles a relay failure reported by the KMLM: an interworking one is sent to the
    /// peer XLMO and diagnosed by this domain's QCLM, at the same time.
    pub async fn local_fault(&self, manager: &Arc<Manager>, failure: RelayFailure) {
        if classify(&manager.config, &failure) == FaultScope::Local {
            tracing::debug!(destination = %failure.destination, "local relay failure: the domain's controller handles it");
            return;
        }
        let report = Self::fault_report(&manager.config, &failure);
        let span = tracing::info_span!("fault_management", message = %report.id, relay_id = ?report.relay_id, destination = %report.destination);
        let diagnosis = diagnosis_of(&report);
        async {
            tokio::join!(
                self.send_fault(manager, &report),
                manager.qclm.diagnose(&manager.events, diagnosis)
            );
        }
        .instrument(span)
        .await
    }

    /// Sends a fault report to the peer XLMO, retrying when the peer is unreachable.
    pub async fn send_fault(&self, manager: &Manager, report: &FaultReport) -> bool {
        let refs = Refs {
            relay_id: report.relay_id,
            message: Some(report.id),
        };
        let peer = &manager.config.peer;
        let mut attempt = 1;
        let outcome = loop {
            match self.mxi.send(report).await {
                Err(SendError::Unreachable(error)) if attempt < FAULT_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "peer manager unreachable; retrying");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    attempt += 1;
                }
                outcome => break outcome,
            }
        };
        match outcome {
            Ok(()) => {
                manager.events.record(
                    events::XLMO_FAULT_SENT,
                    format!(
                        "interworking relay failure of {} toward {} sent to manager {} of domain {}",
                        report.node, report.destination, peer.manager_name, peer.domain
                    ),
                    refs,
                );
                true
            }
            Err(error) => {
                manager.events.record(
                    events::XLMO_SEND_FAILED,
                    format!("fault report toward {}: {error}", report.destination),
                    refs,
                );
                false
            }
        }
    }

    /// Takes a fault report of the peer XLMO (already authenticated and parsed): logs it
    /// and has this domain's QCLM diagnose it in the background. Duplicates are dropped.
    pub fn peer_fault(&self, manager: &Arc<Manager>, report: FaultReport) {
        let refs = Refs {
            relay_id: report.relay_id,
            message: Some(report.id),
        };
        {
            let mut seen = self.seen.lock().expect("seen");
            if seen.contains(&report.id) {
                tracing::info!(message = %report.id, "duplicate fault report dropped");
                return;
            }
            if seen.len() == SEEN_IDS {
                seen.pop_front();
            }
            seen.push_back(report.id);
        }
        let span = tracing::info_span!("fault_management", message = %report.id, relay_id = ?report.relay_id, destination = %report.destination);
        span.in_scope(|| {
            manager.events.record(
                events::XLMO_FAULT_RECEIVED,
                format!(
                    "{} of KM {} toward {} from domain {}: {}",
                    report.fault.name(),
                    report.node,
                    report.destination,
                    report.domain,
                    report.reason
                ),
                refs,
            )
        });
        let manager = manager.clone();
        let diagnosis = diagnosis_of(&report);
        tokio::spawn(
            async move { manager.qclm.diagnose(&manager.events, diagnosis).await }.instrument(span),
        );
    }

    /// Packs the layers' performance reports and the security counts.
    pub async fn pack(&self, manager: &Manager) -> ReportPack {
        // the QLM's reading of the agents and the controller's figures, side by side
        let (quantum, controller) =
            tokio::join!(manager.qlm.collect(), manager.control_layer.read());
        let control_layer = controller.map(|report| {
            // the security report carries the controller's refusals as last read
            *manager
                .security
                .controller_refusals
                .lock()
                .expect("controller refusals") = Some(report.refusals);
            report.control_layer
        });
        ReportPack {
            version: MXI_VERSION,
            kind: ReportPackKind::ReportPack,
            id: Uuid::new_v4(),
            time: now_rfc3339(),
            domain: manager.config.domain.clone(),
            period_seconds: manager.configuration.report_seconds(),
            performance: PerformanceReport {
                quantum,
                key_management: manager.kmlm.report(),
                control_layer,
            },
            security: manager.security.report(),
        }
    }

    /// Packs the reports and sends them to the peer XLMO.
    pub async fn send_reports(&self, manager: &Manager) -> Result<ReportPack, SendError> {
        let span = tracing::info_span!("report", direction = "send");
        async {
            let pack = self.pack(manager).await;
            let refs = Refs {
                relay_id: None,
                message: Some(pack.id),
            };
            match self.mxi.send(&pack).await {
                Ok(()) => {
                    self.reports_failing.store(false, Ordering::Relaxed);
                    manager
                        .events
                        .record(events::XLMO_REPORTS_SENT, summary(&pack), refs);
                    self.latest.lock().expect("latest").sent = Some(pack.clone());
                    Ok(pack)
                }
                Err(error) => {
                    if !self.reports_failing.swap(true, Ordering::Relaxed) {
                        manager.events.record(
                            events::XLMO_SEND_FAILED,
                            format!("report pack: {error} (logged once until a pack gets through)"),
                            refs,
                        );
                    } else {
                        tracing::debug!(%error, "report pack not sent");
                    }
                    Err(error)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Takes a report pack of the peer XLMO (already authenticated and parsed).
    pub fn peer_reports(&self, manager: &Manager, pack: ReportPack) {
        let span = tracing::info_span!("report", direction = "receive");
        span.in_scope(|| {
            manager.events.record(
                events::XLMO_REPORTS_RECEIVED,
                format!("from domain {}: {}", pack.domain, summary(&pack)),
                Refs {
                    relay_id: None,
                    message: Some(pack.id()),
                },
            )
        });
        self.latest.lock().expect("latest").received = Some(pack);
    }

    /// The last packs sent and received.
    pub fn latest(&self) -> LatestReports {
        self.latest.lock().expect("latest").clone()
    }

    /// Sends a report pack every `report_seconds` (as operators set it at run time, see
    /// [`crate::management::northbound`]), forever.
    pub async fn report_loop(manager: Arc<Manager>) {
        loop {
            let _ = manager.xlmo.send_reports(&manager).await;
            let period = Duration::from_secs(manager.configuration.report_seconds());
            tokio::time::sleep(period).await;
        }
    }
}

/// The QCLM's diagnosis of a fault report.
fn diagnosis_of(report: &FaultReport) -> Diagnosis {
    Diagnosis {
        fault: report.fault,
        relay_id: report.relay_id,
        destination: report.destination.clone(),
        node: report.node.clone(),
        reported_by: report.domain.clone(),
        reason: report.reason.clone(),
        message: report.id,
    }
}

/// A report pack for people.
fn summary(pack: &ReportPack) -> String {
    let quantum = &pack.performance.quantum;
    let km = &pack.performance.key_management;
    let security = &pack.security;
    let control = match &pack.performance.control_layer {
        Some(c) => format!(
            "; control layer: {} route installs ({} failed), {} reroutes ({} failed), {} Cxi round trips",
            c.route_installs.count,
            c.route_installs.failed,
            c.reroutes.count,
            c.reroutes.failed,
            c.cxi_round_trips
                .iter()
                .map(|p| p.round_trips.count)
                .sum::<u64>()
        ),
        None => String::new(),
    };
    let controller_refusals = security
        .controller_refusals
        .as_ref()
        .map(|r| {
            format!(
                ", {} controller refusals",
                r.counts.iter().map(|c| c.count).sum::<u64>()
            )
        })
        .unwrap_or_default();
    format!(
        "{} link ends ({} up), {} agents unreachable; {} relay failures ({} interworking), {} link changes, {} low-key alarms{control}; security: {} relay auth failures, {} REST auth failures, {} Mxi rejected, {} Mxi malformed{controller_refusals}",
        quantum.links.len(),
        quantum.links.iter().filter(|l| l.up).count(),
        quantum.unreachable_agents.len(),
        km.relay_failures,
        km.interworking_relay_failures,
        km.link_status_changes,
        km.low_key_alarms,
        security.relay_authentication_failures,
        security.rest_authentication_failures,
        security.mxi_rejected,
        security.mxi_malformed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_toward_other_domains_are_interworking() {
        let config: ManagerConfig = toml::from_str(
            r#"domain = "A"
nodes = ["a1", "a2", "ga1"]
rest_listen = "127.0.0.1:0"
mxi_listen = "127.0.0.1:0"
bearer_tokens = ["t"]
tls = { cert = "c", key = "k", ca = [] }
southbound = { username = "u", password = "p", known_hosts = "known_hosts" }
peer = { domain = "B", manager_name = "manager-B", mxi = "https://127.0.0.1:1" }"#,
        )
        .unwrap();
        let failure = |destination: &str| RelayFailure {
            node: "a1".into(),
            relay_id: None,
            destination: destination.into(),
            reason: "r".into(),
            exhausted: false,
        };
        assert_eq!(classify(&config, &failure("a2")), FaultScope::Local);
        assert_eq!(classify(&config, &failure("ga1")), FaultScope::Local);
        assert_eq!(classify(&config, &failure("b2")), FaultScope::Interworking);
        let report = Xlmo::fault_report(&config, &failure("b2"));
        assert_eq!(report.domain, "A");
        assert_eq!(report.node, "a1");
        assert_eq!(report.version, MXI_VERSION);
        let diagnosis = diagnosis_of(&report);
        assert_eq!(diagnosis.reported_by, "A");
        assert_eq!(diagnosis.message, report.id);
    }
}
