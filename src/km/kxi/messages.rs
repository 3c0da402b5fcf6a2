//! The messages of Kxi-1 (ETSI GS QKD 020's `ext_keys`, its acknowledgement and void, with
//! the relay's extension) and Kxi-2 (where a relay stands).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::km::kma::relay::messages::{RelayBody, RelayedKey};

/// The header carrying the one-time MAC of a Kxi-1 request body.
pub const AUTH_HEADER: &str = "kxi-authentication";

/// `POST /kmapi/v1/ext_keys`: keys pushed to the peer KMS for target SAEs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeysRequest {
    pub initiator_sae_id: String,
    pub target_sae_ids: Vec<String>,
    /// The keys, protected on the link.
    pub key_ids: Vec<ExtKey>,
    /// Key size in bits.
    pub key_size: u32,
    /// Where the peer reports the outcome (`POST`, an [`ExtKeysAck`]).
    pub ack_callback_url: String,
    pub extension: RelayExtension,
}

/// One key of an `ext_keys` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKey {
    #[serde(rename = "key_ID")]
    pub key_id: Uuid,
    /// Numbers of the sender's Qx link blocks padding this key.
    pub pad_blocks: Vec<u64>,
    /// The key XOR the pad (Base64); absent when the pad blocks are the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What the relay across the peer domain needs beyond ETSI GS QKD 020's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayExtension {
    pub relay_version: u32,
    pub relay_id: Uuid,
    /// The Qx link.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub hops_left: u8,
}

/// Outcome of an `ext_keys` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    #[serde(rename = "relayed")]
    Relayed,
    #[serde(rename = "voided")]
    Voided,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "key not present")]
    KeyNotPresent,
}

/// `POST /kmapi/v1/ext_keys/ack`: the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeysAck {
    pub key_ids: Vec<Uuid>,
    pub ack_status: AckStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub extension: AckExtension,
}

/// The relay's side of an acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckExtension {
    pub relay_id: Uuid,
    pub link: String,
    pub delivered: usize,
    pub hops: u32,
}

/// `POST /kmapi/v1/ext_keys/void`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    #[serde(default)]
    pub key_ids: Vec<Uuid>,
    #[serde(default)]
    pub all_confirmation: bool,
}

/// Where an interworking relay received over Kxi-1 stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayStatus {
    InProgress,
    Relayed,
    Failed,
    Voided,
    Unknown,
}

impl ExtKeysRequest {
    pub(super) fn to_relay_body(&self) -> RelayBody {
        let e = &self.extension;
        RelayBody {
            version: e.relay_version,
            relay_id: e.relay_id,
            link: e.link.clone(),
            origin_km: e.origin_km.clone(),
            dest_km: e.dest_km.clone(),
            master_sae: self.initiator_sae_id.clone(),
            slave_saes: self.target_sae_ids.clone(),
            key_size: self.key_size,
            hops_left: e.hops_left,
            keys: self
                .key_ids
                .iter()
                .map(|k| RelayedKey {
                    key_id: k.key_id,
                    pad: k.pad_blocks.clone(),
                    ciphertext: k.key.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ack_status_uses_the_020_names() {
        assert_eq!(
            serde_json::to_string(&AckStatus::KeyNotPresent).unwrap(),
            "\"key not present\""
        );
        let ack: ExtKeysAck = serde_json::from_value(json!({
            "key_ids": [], "ack_status": "relayed",
            "extension": {"relay_id": Uuid::nil(), "link": "qx1", "delivered": 0, "hops": 1}
        }))
        .unwrap();
        assert_eq!(ack.ack_status, AckStatus::Relayed);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = json!({"initiator_sae_id": "a", "target_sae_ids": [], "key_ids": [], "key_size": 256,
            "ack_callback_url": "x", "extension": {"relay_version": 1, "relay_id": Uuid::nil(), "link": "l",
            "origin_km": "o", "dest_km": "d", "hops_left": 3}, "surprise": true});
        assert!(serde_json::from_value::<ExtKeysRequest>(bad).is_err());
    }
}
