//! The relay's messages between KMs: what one hop says to the next, its acknowledgement, and
//! the bounds every hop checks.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the relay message format.
pub const RELAY_VERSION: u32 = 1;
/// Most hops a relayed key may take.
pub const MAX_HOPS: u8 = 32;
/// Most keys in one relay message.
pub const MAX_KEYS_PER_MESSAGE: usize = 1024;
/// Largest key size accepted on the KMA link, in bits.
pub const MAX_RELAY_KEY_BITS: u32 = 65_536;

/// A relay hop message: the body (JSON text) exactly as authenticated, and its MAC.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayEnvelope {
    /// [`RelayBody`] as JSON text; the MAC covers these bytes.
    pub body: String,
    /// Number of the link block (owned by the sender) keying the one-time MAC.
    pub mac_seq: u64,
    /// One-time MAC tag, Base64.
    pub tag: String,
}

/// What one hop says to the next.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayBody {
    pub version: u32,
    pub relay_id: Uuid,
    /// The link this hop crosses.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    /// Key size in bits.
    pub key_size: u32,
    pub hops_left: u8,
    pub keys: Vec<RelayedKey>,
    /// ETSI GS QKD 020 `extension_optional` members that came with the keys over Kxi-1:
    /// passed on unchanged to the next Kxi hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<serde_json::Map<String, serde_json::Value>>,
    /// The interworking node's KM that brought the keys into this QKDN over a transfer
    /// link: the destination KM lets it (and only it, through the previous hop) withdraw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iwn_km: Option<String>,
}

/// One key on one hop.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayedKey {
    pub key_id: Uuid,
    /// Numbers of the sender's link blocks used for this key.
    pub pad: Vec<u64>,
    /// The key XOR the pad, Base64; absent when the pad blocks *are* the key (first hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
}

/// The destination's acknowledgement, passed back hop by hop.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayAck {
    pub relay_id: Uuid,
    pub delivered: usize,
    /// Number of hops the keys travelled.
    pub hops: u32,
}

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}
