//! The QCLM's reading of the domain's controller for the report packs (Y.3818 clause 7,
//! performance and security management): every report period the XLMO asks the controller
//! for its control-layer figures and refusals (`GET {controller}/api/v1/reports`, the bearer
//! token of [`ControllerLink`]) and packs them: the figures as the performance report's
//! `control_layer`, the refusals as the security report's `controller_refusals`.
//!
//! A distributed domain has no controller: its manager's link leads to the speaker KM
//! (`speaker = true`), which has no such figures, so the packs carry none. A controller
//! that does not answer, or an older one without the resource, leaves the figures out of
//! that pack (logged once until a reading succeeds again), never the pack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument;

use super::config::{ControllerLink, ManagerConfig};
use crate::control::figures::ControllerReport;
use crate::tls::TlsError;

/// Largest answer read from the controller.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a reading gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("controller unreachable: {0}")]
    Unreachable(String),
    #[error("controller answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("controller answer malformed: {0}")]
    Malformed(String),
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// Reads the controller's figures and refusals.
pub struct ControlLayerReader {
    /// `None`: no controller (none configured, or a speaker KM).
    client: Option<Client>,
    /// Whether the last reading failed (log a failure once).
    failing: AtomicBool,
}

impl ControlLayerReader {
    /// The reader of `config`'s controller; a reading gives up after `timeout`.
    pub fn new(config: &ManagerConfig, timeout: Duration) -> Result<Self, TlsError> {
        let client = match &config.controller {
            Some(link) if !link.speaker => Some(Self::client(link, timeout)?),
            _ => None,
        };
        Ok(Self {
            client,
            failing: AtomicBool::new(false),
        })
    }

    fn client(link: &ControllerLink, timeout: Duration) -> Result<Client, TlsError> {
        Ok(Client {
            http: crate::tls::https_client_trusting(std::slice::from_ref(&link.ca), timeout)?,
            url: format!("{}/api/v1/reports", link.url.trim_end_matches('/')),
            token: link.token.clone(),
        })
    }

    /// Whether there is a controller to read.
    pub fn has_controller(&self) -> bool {
        self.client.is_some()
    }

    /// The controller's figures and refusals now; `None` without a controller or when the
    /// reading failed (logged once until one succeeds).
    pub async fn read(&self) -> Option<ControllerReport> {
        let client = self.client.as_ref()?;
        let span = tracing::debug_span!("control_layer_reading", url = %client.url);
        match Self::fetch(client).instrument(span).await {
            Ok(report) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the controller's figures are read again");
                }
                Some(report)
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "no control-layer figures in the report packs until the controller answers (logged once)");
                } else {
                    tracing::debug!(%error, "control-layer figures not read");
                }
                None
            }
        }
    }

    async fn fetch(client: &Client) -> Result<ControllerReport, ReadError> {
        let unreachable = |e: reqwest::Error| ReadError::Unreachable(e.to_string());
        let mut response = client
            .http
            .get(&client.url)
            .bearer_auth(&client.token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(ReadError::Malformed(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
        }
        if status != 200 {
            let mut detail = String::from_utf8_lossy(&body).into_owned();
            detail.truncate(detail.floor_char_boundary(300));
            return Err(ReadError::Refused { status, detail });
        }
        serde_json::from_slice(&body).map_err(|e| ReadError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(controller: &str) -> ManagerConfig {
        toml::from_str(&format!(
            r#"domain = "A"
nodes = ["a1"]
rest_listen = "127.0.0.1:0"
mxi_listen = "127.0.0.1:0"
bearer_tokens = ["t"]
tls = {{ cert = "c", key = "k", ca = [] }}
southbound = {{ username = "u", password = "p", known_hosts = "known_hosts" }}
peer = {{ domain = "B", manager_name = "manager-B", mxi = "https://127.0.0.1:1" }}
{controller}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn no_controller_or_a_speaker_gives_no_figures_and_no_error() {
        let none = ControlLayerReader::new(&config(""), Duration::from_secs(1)).unwrap();
        assert!(!none.has_controller());
        assert!(none.read().await.is_none());
        // a distributed domain: the link leads to the speaker KM, which is never asked
        let speaker = config(
            "[controller]\nurl = \"https://127.0.0.1:1\"\ntoken = \"x\"\nca = \"/nonexistent/ca.crt\"\nspeaker = true\n",
        );
        let reader = ControlLayerReader::new(&speaker, Duration::from_secs(1)).unwrap();
        assert!(!reader.has_controller());
        assert!(reader.read().await.is_none());
        assert!(!reader.failing.load(Ordering::Relaxed));
    }
}
