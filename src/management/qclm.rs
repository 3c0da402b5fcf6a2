//! The QKDN control layer manager (QCLM): takes the XLMO's diagnoses and decides. For an
//! interworking relay failure it asks the domain's controller to check the relay routes
//! toward the destination and reroute (`POST {controller}/api/v1/diagnoses`), at most once
//! per destination and hold-down period. Every outcome is an event, never a panic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::config::ManagerConfig;
use super::events::{self, EventLog, Refs};
use super::mxi::messages::FaultType;
use crate::tls::TlsError;

/// Longest controller answer kept in an event.
const ANSWER_MAX: usize = 500;

/// What the XLMO tells the QCLM about a fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// What failed.
    pub fault: FaultType,
    /// The relay operation, if known.
    pub relay_id: Option<Uuid>,
    /// The node the keys were relayed to.
    pub destination: String,
    /// The KM node that reported the failure.
    pub node: String,
    /// The domain whose KMLM saw the failure.
    pub reported_by: String,
    /// Why, as the KM put it.
    pub reason: String,
    /// The Mxi fault report carrying it.
    pub message: Uuid,
}

/// The body of `POST /api/v1/diagnoses` on the controller.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerDiagnosis {
    /// `QCLM-<domain>`.
    pub source: String,
    /// The fault type (`interworking-relay-failure`).
    pub kind: &'static str,
    /// The relay operation, if known.
    pub relay_id: Option<Uuid>,
    /// The node the keys were relayed to.
    pub destination: String,
    /// The domain whose KMLM saw the failure.
    pub reported_by: String,
    /// Why, as the KM put it.
    pub reason: String,
}

/// What the QCLM decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It asked the controller to check and reroute; the controller's answer.
    Asked { status: u16, answer: String },
    /// It tried to ask the controller, which did not answer.
    Unreachable(String),
    /// It had asked about this destination shortly before and did not ask again.
    Suppressed { seconds_ago: f64 },
    /// No controller is configured: the diagnosis is only logged.
    NoController,
}

struct ControllerClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// The QCLM of one domain.
pub struct Qclm {
    domain: String,
    controller: Option<ControllerClient>,
    holddown: Duration,
    /// When the controller last accepted a diagnosis, by (reporting domain, destination).
    asked: Mutex<HashMap<(String, String), Instant>>,
}

impl Qclm {
    /// The QCLM of `config`'s domain.
    pub fn new(config: &ManagerConfig) -> Result<Self, TlsError> {
        let controller = match &config.controller {
            Some(c) => Some(ControllerClient {
                http: crate::tls::https_client_trusting(
                    std::slice::from_ref(&c.ca),
                    Duration::from_secs(10),
                )?,
                url: format!("{}/api/v1/diagnoses", c.url.trim_end_matches('/')),
                token: c.token.clone(),
            }),
            None => None,
        };
        Ok(Self {
            domain: config.domain.clone(),
            controller,
            holddown: Duration::from_secs(config.diagnosis_holddown_seconds),
            asked: Mutex::new(HashMap::new()),
        })
    }

    /// The request the controller gets for `diagnosis`.
    pub fn request(&self, diagnosis: &Diagnosis) -> ControllerDiagnosis {
        ControllerDiagnosis {
            source: format!("QCLM-{}", self.domain),
            kind: diagnosis.fault.name(),
            relay_id: diagnosis.relay_id,
            destination: diagnosis.destination.clone(),
            reported_by: diagnosis.reported_by.clone(),
            reason: diagnosis.reason.clone(),
        }
    }

    /// Takes a diagnosis, decides and logs both (`qclm-diagnosis`, `qclm-decision`).
    pub async fn diagnose(&self, events: &EventLog, diagnosis: Diagnosis) -> Decision {
        let refs = Refs {
            relay_id: diagnosis.relay_id,
            message: Some(diagnosis.message),
        };
        events.record(
            events::QCLM_DIAGNOSIS,
            format!(
                "{} toward {} reported by domain {} (KM {}): {}",
                diagnosis.fault.name(),
                diagnosis.destination,
                diagnosis.reported_by,
                diagnosis.node,
                diagnosis.reason
            ),
            refs,
        );
        let decision = self.decide(&diagnosis).await;
        let detail = match &decision {
            Decision::Asked { status, answer } => format!(
                "asked the controller to check and reroute toward {}: HTTP {status} {answer}",
                diagnosis.destination
            ),
            Decision::Unreachable(error) => format!(
                "could not ask the controller about {}: {error}",
                diagnosis.destination
            ),
            Decision::Suppressed { seconds_ago } => format!(
                "the controller was asked about {} {seconds_ago:.1} s ago; not asking again",
                diagnosis.destination
            ),
            Decision::NoController => "no controller configured; diagnosis logged only".into(),
        };
        events.record(events::QCLM_DECISION, detail, refs);
        decision
    }

    async fn decide(&self, diagnosis: &Diagnosis) -> Decision {
        let Some(controller) = &self.controller else {
            return Decision::NoController;
        };
        let key = (diagnosis.reported_by.clone(), diagnosis.destination.clone());
        if let Some(at) = self.asked.lock().expect("asked").get(&key) {
            if at.elapsed() < self.holddown {
                return Decision::Suppressed {
                    seconds_ago: at.elapsed().as_secs_f64(),
                };
            }
        }
        let sent = controller
            .http
            .post(&controller.url)
            .bearer_auth(&controller.token)
            .json(&self.request(diagnosis))
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let mut answer = response
                    .text()
                    .await
                    .unwrap_or_else(|e| format!("(answer unreadable: {e})"));
                if answer.len() > ANSWER_MAX {
                    let mut end = ANSWER_MAX;
                    while !answer.is_char_boundary(end) {
                        end -= 1;
                    }
                    answer.truncate(end);
                }
                if status.is_success() {
                    self.asked
                        .lock()
                        .expect("asked")
                        .insert(key, Instant::now());
                }
                Decision::Asked {
                    status: status.as_u16(),
                    answer,
                }
            }
            Err(error) => Decision::Unreachable(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_request_is_as_documented() {
        let config: ManagerConfig = toml::from_str(
            r#"domain = "A"
nodes = ["a1"]
rest_listen = "127.0.0.1:0"
mxi_listen = "127.0.0.1:0"
bearer_tokens = ["t"]
tls = { cert = "c", key = "k", ca = [] }
southbound = { username = "u", password = "p", known_hosts = "known_hosts" }
peer = { domain = "B", manager_name = "manager-B", mxi = "https://127.0.0.1:1" }"#,
        )
        .unwrap();
        let qclm = Qclm::new(&config).unwrap();
        let diagnosis = Diagnosis {
            fault: FaultType::InterworkingRelayFailure,
            relay_id: None,
            destination: "b2".into(),
            node: "ga1".into(),
            reported_by: "B".into(),
            reason: "r".into(),
            message: Uuid::nil(),
        };
        assert_eq!(
            serde_json::to_value(qclm.request(&diagnosis)).unwrap(),
            serde_json::json!({"source": "QCLM-A", "kind": "interworking-relay-failure",
                "relay_id": null, "destination": "b2", "reported_by": "B", "reason": "r"})
        );
        let events = EventLog::default();
        let decision = futures::executor::block_on(qclm.diagnose(&events, diagnosis));
        assert_eq!(decision, Decision::NoController);
        assert_eq!(events.of_kind(events::QCLM_DIAGNOSIS).len(), 1);
        assert_eq!(events.of_kind(events::QCLM_DECISION).len(), 1);
    }
}
