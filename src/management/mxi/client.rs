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
    /// The message could not be signed, or the acceptance is not signed by the peer manager.
    #[error("peer manager's acceptance not proven: {0}")]
    Unproven(String),
}

/// The Mxi client of this manager toward the peer manager. It presents this manager's
/// certificate and trusts only the peer domain's CA for the server.
pub struct MxiClient {
    http: reqwest::Client,
    base: String,
    /// Signs the messages, checks and keeps the signed acceptances.
    signing: crate::nonrepudiation::http::ClientPoint,
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
        let notary = crate::nonrepudiation::for_tls(&config.tls)
            .map_err(|e| ConfigError::Invalid(format!("non-repudiation: {e}")))?;
        Ok(Self {
            http: crate::tls::https_client(&files, Duration::from_secs(10))?,
            base: config.peer.mxi.trim_end_matches('/').to_owned(),
            signing: crate::nonrepudiation::http::ClientPoint {
                notary,
                point: "mxi",
                peer: config.peer.domain.clone(),
                peer_identity: crate::tls::foreign_identity(
                    &config.peer.manager_name,
                    &config.peer.domain,
                ),
            },
        })
    }

    /// Posts a message to the peer manager.
    /// Signed ([`crate::nonrepudiation`]); the acceptance must be signed by the peer manager.
    pub async fn send<T: MxiMessage>(&self, message: &T) -> Result<(), SendError> {
        self.post(message).await.map(|_| ())
    }

    /// Posts a message to the peer manager and reads its answer (signed like
    /// [`Self::send`]).
    pub async fn exchange<T: MxiMessage, R: serde::de::DeserializeOwned>(
        &self,
        message: &T,
    ) -> Result<R, SendError> {
        let body = self.post(message).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SendError::Unproven(format!("unreadable answer: {e}")))
    }

    /// Posts a signed message; the body of the peer's signed acceptance (2xx).
    async fn post<T: MxiMessage>(&self, message: &T) -> Result<bytes::Bytes, SendError> {
        use crate::nonrepudiation::http::ExchangeError;
        let request = self
            .http
            .post(format!("{}{}", self.base, T::PATH))
            .json(message)
            .build()?;
        let agreement = format!("{} {}", T::KIND, message.id());
        let answer = match self.signing.send(&self.http, request, &agreement).await {
            Ok(answer) => answer,
            Err(ExchangeError::Unreachable(error)) => return Err(SendError::Unreachable(error)),
            Err(error) => return Err(SendError::Unproven(error.to_string())),
        };
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        let detail = serde_json::from_str::<Problem>(&body)
            .map(|p| p.detail)
            .unwrap_or(body);
        Err(SendError::Refused {
            status: answer.status,
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
