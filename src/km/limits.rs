//! Limits of a KM agent against load and abuse (`[limits]` of the agent's TOML
//! configuration): its HTTPS listeners, admission of ETSI GS QKD 014 requests, and keys
//! waiting for their slave SAE.

use serde::{Deserialize, Serialize};

use crate::conn_limit::ConnectionLimits;
use crate::https::HttpLimits;

/// Limits of one KM agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmLimits {
    /// The ETSI GS QKD 014 listener (SAEs).
    pub etsi014_listener: HttpLimits,
    /// The KMA listener (peer KMs, Kxi, the emulated quantum channel, operators).
    pub kma_listener: HttpLimits,
    /// ETSI GS QKD 014 requests handled at once; beyond, 503 with `Retry-After`.
    pub etsi014_max_requests: usize,
    /// ETSI GS QKD 014 requests of one SAE handled at once; beyond, 503 with `Retry-After`.
    pub etsi014_max_requests_per_sae: usize,
    /// Seconds a key handed to a master SAE waits for its slave SAE; then it is erased.
    pub undelivered_key_ttl_seconds: u64,
    /// Keys at most waiting for one slave SAE from one master SAE; a request beyond is
    /// answered 503 until the slave fetches keys or they expire.
    pub max_undelivered_keys_per_pair: u64,
    /// Seconds for which a slave SAE may fetch a key it fetched already once more, under the
    /// same key ID and master SAE (an answer lost to a crash or a broken connection costs no
    /// key); then the key is erased. 0: once only.
    pub refetch_window_seconds: u64,
}

impl Default for KmLimits {
    fn default() -> Self {
        Self {
            etsi014_listener: HttpLimits {
                // many SAEs may share one address
                connections: ConnectionLimits::new(4096, 2048),
                ..HttpLimits::default()
            },
            kma_listener: HttpLimits::default(),
            etsi014_max_requests: 256,
            etsi014_max_requests_per_sae: 64,
            undelivered_key_ttl_seconds: 3600,
            max_undelivered_keys_per_pair: 65_536,
            refetch_window_seconds: 60,
        }
    }
}

impl KmLimits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        self.etsi014_listener
            .check()
            .map_err(|e| format!("limits.etsi014_listener: {e}"))?;
        self.kma_listener
            .check()
            .map_err(|e| format!("limits.kma_listener: {e}"))?;
        if self.etsi014_max_requests == 0 || self.etsi014_max_requests_per_sae == 0 {
            return Err("limits.etsi014_max_requests(_per_sae) must be positive".into());
        }
        if self.undelivered_key_ttl_seconds == 0 || self.max_undelivered_keys_per_pair == 0 {
            return Err(
                "limits.undelivered_key_ttl_seconds and max_undelivered_keys_per_pair must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}
