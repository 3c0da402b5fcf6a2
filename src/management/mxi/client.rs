//! The Mxi client toward the peer manager.

use std::time::Duration;

use super::messages::{MxiMessage, Versions};
use crate::management::config::{ConfigError, ManagerConfig};
use crate::management::ManagementError;
use crate::problem::Problem;
use crate::tls::TlsFiles;

/// Why a message did not reach the peer manager.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("peer manager unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("peer manager refused the message (HTTP {status}): {detail}")]
    Refused { status: u16, detail: String },
}

/// The Mxi client of this manager toward the peer manager. It presents this manager's
/// certificate and trusts only the peer domain's CA for the server.
pub struct MxiClient {
    http: reqwest::Client,
    base: String,
}

impl MxiClient {
    /// The client of `config` (its peer CA must be configured).
    pub fn new(config: &ManagerConfig) -> Result<Self, ManagementError> {
        let peer_ca = config.peer_ca().ok_or_else(|| {
            ConfigError::Invalid(format!("no CA of the peer domain {}", config.peer.domain))
        })?;
        let files = TlsFiles {
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            ca: vec![peer_ca.to_path_buf()],
            peer_cas: Vec::new(),
        };
        Ok(Self {
            http: crate::tls::https_client(&files, Duration::from_secs(10))?,
            base: config.peer.mxi.trim_end_matches('/').to_owned(),
        })
    }

    /// Posts a message to the peer manager.
    pub async fn send<T: MxiMessage>(&self, message: &T) -> Result<(), SendError> {
        let response = self
            .http
            .post(format!("{}{}", self.base, T::PATH))
            .json(message)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Problem>(&body)
            .map(|p| p.detail)
            .unwrap_or(body);
        Err(SendError::Refused {
            status: status.as_u16(),
            detail,
        })
    }

    /// The peer's supported Mxi versions.
    pub async fn versions(&self) -> Result<Versions, SendError> {
        let response = self
            .http
            .get(format!("{}/mxi/v1/versions", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(SendError::Refused {
                status: response.status().as_u16(),
                detail: response.text().await.unwrap_or_default(),
            });
        }
        Ok(response.json().await?)
    }
}
