#![allow(non_snake_case)] // field names are the standard's JSON names
//! ETSI GS QKD 014 V1.1.1 data formats (JSON field names as in the standard) and a typed
//! client for SAEs (used by the demo, the benches and the tests).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `Status` data format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub source_KME_ID: String,
    pub target_KME_ID: String,
    pub master_SAE_ID: String,
    pub slave_SAE_ID: String,
    pub key_size: u32,
    pub stored_key_count: u64,
    pub max_key_count: u64,
    pub max_key_per_request: u32,
    pub max_key_size: u32,
    pub min_key_size: u32,
    pub max_SAE_ID_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<Value>,
}

/// `Key request` data format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_slave_SAE_IDs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Vec<Value>>,
}

/// One key of a `Key container` (its `Debug` never shows the key).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub key_ID: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ID_extension: Option<Value>,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<Value>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("key_ID", &self.key_ID)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// `Key container` data format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyContainer {
    pub keys: Vec<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<Value>,
}

/// One entry of `Key IDs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIdEntry {
    pub key_ID: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ID_extension: Option<Value>,
}

/// `Key IDs` data format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIds {
    pub key_IDs: Vec<KeyIdEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_IDs_extension: Option<Value>,
}

/// `Error` data format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Value>>,
}

/// An error answer of a KME, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("KME answered HTTP {status}: {}", body.message)]
    Kme { status: u16, body: ErrorBody },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

/// A typed ETSI GS QKD 014 client for one SAE at one KME.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of the KME at `base` (`https://host:port`) using the SAE's HTTPS client.
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: format!("{}/api/v1/keys", base.trim_end_matches('/')),
        }
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = response.status().as_u16();
        if status == 200 {
            Ok(response.json().await?)
        } else {
            Err(ClientError::Kme {
                status,
                body: response.json().await?,
            })
        }
    }

    /// `Get status`.
    pub async fn status(&self, slave: &str) -> Result<Status, ClientError> {
        Self::answer(
            self.http
                .get(format!("{}/{slave}/status", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// `Get key` (POST form).
    pub async fn enc_keys(
        &self,
        slave: &str,
        request: &KeyRequest,
    ) -> Result<KeyContainer, ClientError> {
        let url = format!("{}/{slave}/enc_keys", self.base);
        Self::answer(self.http.post(url).json(request).send().await?).await
    }

    /// `Get key with key IDs` (POST form).
    pub async fn dec_keys(
        &self,
        master: &str,
        key_ids: &[String],
    ) -> Result<KeyContainer, ClientError> {
        let body = KeyIds {
            key_IDs: key_ids
                .iter()
                .map(|id| KeyIdEntry {
                    key_ID: id.clone(),
                    key_ID_extension: None,
                })
                .collect(),
            key_IDs_extension: None,
        };
        let url = format!("{}/{master}/dec_keys", self.base);
        Self::answer(self.http.post(url).json(&body).send().await?).await
    }
}
