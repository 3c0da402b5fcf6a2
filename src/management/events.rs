//! What the manager did or saw: a bounded in-memory log served on its REST API, and the
//! security counters that go into its report packs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::mxi::messages::SecurityReport;
use crate::netconf::server::now_rfc3339;

/// Most events kept.
const EVENT_LOG: usize = 2000;

/// The KMLM saw a `relay-failure` notification (local or interworking).
pub const KMLM_RELAY_FAILURE: &str = "kmlm-relay-failure";
/// The KMLM saw a `link-status-change` notification.
pub const KMLM_LINK_STATUS: &str = "kmlm-link-status";
/// The KMLM saw a `low-key-alarm` notification.
pub const KMLM_LOW_KEY: &str = "kmlm-low-key";
/// The KMLM saw a `key-transfer` notification of an IWN's KM (Y.3818 9.2).
pub const KMLM_KEY_TRANSFER: &str = "kmlm-key-transfer";
/// The KMLM saw a `security-event` notification (a failed NETCONF login at a KM).
pub const KMLM_SECURITY_EVENT: &str = "kmlm-security-event";
/// The XLMO sent an interworking fault report to the peer XLMO.
pub const XLMO_FAULT_SENT: &str = "xlmo-fault-sent";
/// The XLMO received a fault report from the peer XLMO.
pub const XLMO_FAULT_RECEIVED: &str = "xlmo-fault-received";
/// The XLMO sent a report pack to the peer XLMO.
pub const XLMO_REPORTS_SENT: &str = "xlmo-reports-sent";
/// The XLMO received a report pack from the peer XLMO.
pub const XLMO_REPORTS_RECEIVED: &str = "xlmo-reports-received";
/// Sending a message to the peer XLMO failed (after retries).
pub const XLMO_SEND_FAILED: &str = "xlmo-send-failed";
/// The QCLM was given a diagnosis.
pub const QCLM_DIAGNOSIS: &str = "qclm-diagnosis";
/// The QCLM decided (with the controller's answer).
pub const QCLM_DECISION: &str = "qclm-decision";
/// The Mxi server refused a message (unauthorized client or forged domain).
pub const MXI_REJECTED: &str = "mxi-rejected";
/// Refusals at a reference point went above its threshold (the manager's own, a KM's
/// `security-event` of kind `refusal-threshold`, or the controller's `refusal-alarm`).
pub const REFUSAL_ALARM: &str = "refusal-alarm";

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerEvent {
    /// RFC 3339 time.
    pub time: String,
    /// One of the kinds above (`kmlm-relay-failure`, `xlmo-fault-sent`, ...).
    pub kind: String,
    /// For people.
    pub detail: String,
    /// The relay operation concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<Uuid>,
    /// The Mxi message concerned (the same id in both domains' logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Uuid>,
}

/// References of an event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refs {
    /// The relay operation.
    pub relay_id: Option<Uuid>,
    /// The Mxi message.
    pub message: Option<Uuid>,
}

/// The bounded event log; every event also goes to the manager's audit log.
#[derive(Debug, Default)]
pub struct EventLog(Mutex<VecDeque<ManagerEvent>>, crate::audit::AuditLog);

impl EventLog {
    /// An empty log whose events are also written to `audit`.
    pub fn with_audit(audit: crate::audit::AuditLog) -> Self {
        Self(Mutex::default(), audit)
    }

    /// Records an event (and traces it).
    pub fn record(&self, kind: &str, detail: impl Into<String>, refs: Refs) {
        let detail = detail.into();
        tracing::info!(kind, relay_id = ?refs.relay_id, mxi_message = ?refs.message, "{detail}");
        crate::audit::hooks::manager_event(&self.1, kind, &detail, refs.relay_id, refs.message);
        let mut events = self.0.lock().expect("events");
        if events.len() == EVENT_LOG {
            events.pop_front();
        }
        events.push_back(ManagerEvent {
            time: now_rfc3339(),
            kind: kind.to_owned(),
            detail,
            relay_id: refs.relay_id,
            message: refs.message,
        });
    }

    /// Every event kept, oldest first.
    pub fn all(&self) -> Vec<ManagerEvent> {
        self.0.lock().expect("events").iter().cloned().collect()
    }

    /// The events of one kind, oldest first.
    pub fn of_kind(&self, kind: &str) -> Vec<ManagerEvent> {
        self.0
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }
}

/// Security-relevant counts since the manager started.
#[derive(Debug, Default)]
pub struct SecurityCounters {
    /// Relay failures whose reason is a failed authentication (from the KMLM).
    pub relay_authentication_failures: AtomicU64,
    /// REST requests without a valid bearer token.
    pub rest_authentication_failures: AtomicU64,
    /// Mxi requests refused for their client identity or a forged domain.
    pub mxi_rejected: AtomicU64,
    /// Mxi requests refused as malformed or of an unsupported version.
    pub mxi_malformed: AtomicU64,
    /// Failed NETCONF logins the KMs reported (`security-event` notifications).
    pub netconf_authentication_failures: AtomicU64,
    /// Refusals at the manager's own reference points (Mxi, REST, NETCONF) with their
    /// sources, and its refusal alarms.
    pub refusals: std::sync::Arc<crate::refusals::Refusals>,
    /// What the domain's controller last reported of its refusals (Cxi, REST, NETCONF).
    pub controller_refusals: Mutex<Option<crate::refusals::RefusalReport>>,
    /// Refusal alarms (`security-event` of kind `refusal-threshold`) the KMs raised.
    pub km_refusal_alarms: AtomicU64,
}

impl SecurityCounters {
    /// Counters whose refusal alarms follow `config`.
    pub fn with_refusals(config: &crate::refusals::RefusalConfig) -> Self {
        Self {
            refusals: std::sync::Arc::new(crate::refusals::Refusals::new(config.clone())),
            ..Self::default()
        }
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as a report.
    pub fn report(&self) -> SecurityReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SecurityReport {
            relay_authentication_failures: get(&self.relay_authentication_failures),
            rest_authentication_failures: get(&self.rest_authentication_failures),
            mxi_rejected: get(&self.mxi_rejected),
            mxi_malformed: get(&self.mxi_malformed),
            netconf_authentication_failures: get(&self.netconf_authentication_failures),
            km_refusal_alarms: get(&self.km_refusal_alarms),
            refusals: self.refusals.report(),
            controller_refusals: self
                .controller_refusals
                .lock()
                .expect("controller refusals")
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_filtered() {
        let log = EventLog::default();
        for i in 0..EVENT_LOG + 5 {
            let kind = if i % 2 == 0 {
                QCLM_DIAGNOSIS
            } else {
                MXI_REJECTED
            };
            log.record(kind, format!("{i}"), Refs::default());
        }
        let all = log.all();
        assert_eq!(all.len(), EVENT_LOG);
        assert_eq!(all[0].detail, "5");
        assert_eq!(log.of_kind(MXI_REJECTED).len(), EVENT_LOG / 2);
        let counters = SecurityCounters::default();
        SecurityCounters::bump(&counters.mxi_rejected);
        assert_eq!(counters.report().mxi_rejected, 1);
    }
}
