//! The messages of Kxi-1 / Kxi-1', field for field those of ETSI GS QKD 020 V1.1.1
//! (`version_container`, `ext_key_container`, `ack_container`, `void_container`), the
//! extensions qkdni puts in them, and the checks every body passes.
//!
//! qkdni's own data travels only in the standard's extension members, under one prefix
//! ([`EXT_PREFIX`], built on the placeholder enterprise number [`QKDNI_PEN`]):
//! - `extension_mandatory.`[`EXT_RELAY`]: the relay ([`RelayExtension`]) — a peer that does
//!   not know it must refuse the keys (503), as the standard wants of a mandatory extension;
//! - `keys[i].extension.`[`EXT_PAD`]: on a Qx link, the numbers of the sender's link blocks
//!   padding key `i`;
//! - `ack_container.extension.`[`EXT_ACK`]: the relay's side of an acknowledgement;
//! - `void_container.extension.`[`EXT_VOID`]: the relay voided.
//!
//! On a Qx link `value` is the key XOR its pad. When the sending KM originates the keys, the
//! pad *is* the key (both ends hold it already): `value` is then the key XOR itself, all
//! zero bytes of the key's length, so every receiver computes `value XOR pad` alike. On a
//! transfer link (inside an interworking node, mutual TLS) `value` is the key itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The header carrying the one-time MAC of a Kxi-1 request body (over its exact bytes).
pub const AUTH_HEADER: &str = "kxi-authentication";

/// The IANA Private Enterprise Number qkdni's extensions are named with. A placeholder: 32473
/// is the number RFC 5612 reserves for documentation; a deployment with its own PEN changes
/// it here (and only here: every name below is built on it).
pub const QKDNI_PEN: u32 = 32473;
/// The prefix of every extension member qkdni defines (`E<PEN>_qkdni_`).
pub const EXT_PREFIX: &str = "E32473_qkdni_";
/// `extension_mandatory` member: the relay ([`RelayExtension`]).
pub const EXT_RELAY: &str = "E32473_qkdni_relay";
/// `keys[i].extension` member: the pad block numbers of key `i` (Qx link).
pub const EXT_PAD: &str = "E32473_qkdni_pad";
/// `ack_container.extension` member: [`AckExtension`].
pub const EXT_ACK: &str = "E32473_qkdni_ack";
/// `void_container.extension` member: [`VoidExtension`].
pub const EXT_VOID: &str = "E32473_qkdni_void";

/// The `capabilities` this KM advertises: it answers requests without `ack_callback_url`
/// synchronously.
pub const CAPABILITIES: &[&str] = &["synchronous_mode"];
/// Most keys in one `ext_key_container`, ack containers in one acknowledgement and key ids
/// in one container.
pub const MAX_ITEMS: usize = 1024;
/// Longest `ack_callback_url`.
pub const MAX_URL: usize = 1024;
/// Longest `message` of an acknowledgement.
pub const MAX_MESSAGE: usize = 4096;

/// An extension object: 1..=1024 members named `E<PEN>_...`.
pub type Extension = Map<String, Value>;

/// `GET /kmapi/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionContainer {
    pub versions: Vec<String>,
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
}

impl VersionContainer {
    /// What this KM speaks.
    pub fn ours() -> Self {
        Self {
            versions: vec!["v1".into()],
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            extension: None,
        }
    }
}

/// `POST /kmapi/v1/ext_keys`: keys pushed to the peer KMS for target SAEs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeyContainer {
    pub keys: Vec<ExtKey>,
    pub initiator_sae_id: String,
    pub target_sae_ids: Vec<String>,
    /// Asynchronous mode: where the outcome goes (`POST`, [`AckContainer`]s); absent:
    /// synchronous mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Extension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Extension>,
}

/// One key of an `ext_key_container`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKey {
    pub key_id: Uuid,
    /// Base64 (RFC 4648).
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
}

/// The relay, in `extension_mandatory.`[`EXT_RELAY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayExtension {
    pub version: u32,
    pub relay_id: Uuid,
    /// The Qx or transfer link crossed.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub hops_left: u8,
    /// Key size in bits.
    pub key_size: u32,
}

/// Outcome of an `ext_keys` or `void` request for the keys of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    #[serde(rename = "relayed")]
    Relayed,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "voided")]
    Voided,
    #[serde(rename = "failed to void")]
    FailedToVoid,
    #[serde(rename = "key not present")]
    KeyNotPresent,
}

/// One key id of an acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIdEntry {
    pub key_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
}

/// One `ack_container` (the body of `POST /kmapi/v1/ext_keys/ack` is an array of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckContainer {
    pub key_id_container: Vec<KeyIdEntry>,
    pub ack_status: AckStatus,
    pub initiator_sae_id: String,
    pub target_sae_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
}

/// The relay's side of an acknowledgement, in `extension.`[`EXT_ACK`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckExtension {
    pub relay_id: Uuid,
    pub link: String,
    pub delivered: usize,
    pub hops: u32,
}

/// `POST /kmapi/v1/ext_keys/void`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidContainer {
    pub key_ids: Vec<Uuid>,
    pub initiator_sae_id: String,
    pub target_sae_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_confirmation: Option<bool>,
}

/// The relay voided, in `void_container.extension.`[`EXT_VOID`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidExtension {
    pub relay_id: Uuid,
    pub link: String,
}

/// Where an interworking relay received over Kxi-1/Kxi-1' stands (Kxi-2 / Kxi-2').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayStatus {
    InProgress,
    Relayed,
    Failed,
    Voided,
    /// The void came too late: a slave SAE already fetched keys.
    FailedToVoid,
    Unknown,
}

/// A single-member extension object.
pub fn extension_of(name: &str, value: impl Serialize) -> Extension {
    let mut map = Map::new();
    map.insert(
        name.to_owned(),
        serde_json::to_value(value).expect("extension values serialize"),
    );
    map
}

/// Member `name` of `extension`, if present (`Err` when it is there but malformed).
pub fn member<T: serde::de::DeserializeOwned>(
    extension: Option<&Extension>,
    name: &str,
) -> Result<Option<T>, String> {
    match extension.and_then(|e| e.get(name)) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("{name}: {e}")),
    }
}

/// Whether `id` is an SAE ID the standard allows: 1..=64 characters, all RFC 3986
/// unreserved or reserved.
pub fn valid_sae_id(id: &str) -> bool {
    (1..=64).contains(&id.chars().count())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=".contains(c))
}

/// Why an extension object breaks the standard's rules (1..=1024 members named `E<PEN>_...`).
pub fn extension_error(extension: &Extension) -> Option<String> {
    if extension.is_empty() || extension.len() > MAX_ITEMS {
        return Some("an extension has 1 to 1024 members".into());
    }
    extension
        .keys()
        .find(|name| !valid_extension_name(name))
        .map(|name| format!("extension member {name} is not named E<PEN>_..."))
}

fn valid_extension_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('E') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with('_') && rest.len() > digits + 1
}

/// The first member of `extension_mandatory` this KM does not support.
pub fn unsupported_mandatory(extension: Option<&Extension>) -> Option<String> {
    extension?.keys().find(|name| *name != EXT_RELAY).cloned()
}

/// Why the SAE ids of a body are not acceptable.
pub fn sae_ids_error(initiator: &str, targets: &[String]) -> Option<BTreeMap<String, String>> {
    let mut details = BTreeMap::new();
    if !valid_sae_id(initiator) {
        details.insert(
            "invalid_initiator_sae_id".into(),
            initiator.chars().take(80).collect(),
        );
    }
    if targets.is_empty() {
        details.insert(
            "missing_target_sae_ids".into(),
            "target_sae_ids is empty".into(),
        );
    }
    if let Some(bad) = targets.iter().find(|t| !valid_sae_id(t)) {
        details.insert(
            "invalid_target_sae_id".into(),
            bad.chars().take(80).collect(),
        );
    }
    (!details.is_empty()).then_some(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_qkdni_extension_name_is_built_on_the_pen() {
        assert_eq!(EXT_PREFIX, format!("E{QKDNI_PEN}_qkdni_"));
        for name in [EXT_RELAY, EXT_PAD, EXT_ACK, EXT_VOID] {
            assert!(name.starts_with(EXT_PREFIX), "{name}");
            assert!(valid_extension_name(name));
        }
    }

    #[test]
    fn ack_status_uses_the_020_names() {
        assert_eq!(
            serde_json::to_string(&AckStatus::KeyNotPresent).unwrap(),
            "\"key not present\""
        );
        assert_eq!(
            serde_json::to_string(&AckStatus::FailedToVoid).unwrap(),
            "\"failed to void\""
        );
        let acks: Vec<AckContainer> = serde_json::from_value(json!([{
            "key_id_container": [{"key_id": Uuid::nil()}], "ack_status": "relayed",
            "initiator_sae_id": "sae-a", "target_sae_ids": ["sae-b"]
        }]))
        .unwrap();
        assert_eq!(acks[0].ack_status, AckStatus::Relayed);
    }

    #[test]
    fn a_plain_third_party_container_parses_and_unknown_fields_do_not() {
        let plain = json!({"keys": [{"key_id": Uuid::nil(), "value": "AAAA"}],
            "initiator_sae_id": "sae-a", "target_sae_ids": ["sae-b"]});
        let parsed: ExtKeyContainer = serde_json::from_value(plain.clone()).unwrap();
        assert!(parsed.ack_callback_url.is_none() && parsed.extension_mandatory.is_none());
        let mut bad = plain;
        bad["surprise"] = json!(true);
        assert!(serde_json::from_value::<ExtKeyContainer>(bad).is_err());
    }

    #[test]
    fn sae_ids_follow_rfc_3986() {
        assert!(valid_sae_id("sae-a1"));
        assert!(valid_sae_id("urn:x:sae/1?q=2"));
        assert!(!valid_sae_id(""));
        assert!(!valid_sae_id("has space"));
        assert!(!valid_sae_id("percent%"));
        assert!(!valid_sae_id(&"x".repeat(65)));
        assert!(sae_ids_error("a", &[]).is_some());
        assert!(sae_ids_error("a", &["b".into()]).is_none());
    }

    #[test]
    fn extensions_are_named_by_pen_and_unknown_mandatory_ones_are_found() {
        let ok = extension_of("E123_vendor_x", 1);
        assert_eq!(extension_error(&ok), None);
        assert!(extension_error(&Map::new()).is_some());
        assert!(extension_error(&extension_of("E_x", 1)).is_some());
        assert!(extension_error(&extension_of("E12", 1)).is_some());
        assert!(extension_error(&extension_of("X1_x", 1)).is_some());
        let mut mandatory = extension_of(EXT_RELAY, 1);
        assert_eq!(unsupported_mandatory(Some(&mandatory)), None);
        mandatory.insert("E99_other".into(), json!({}));
        assert_eq!(
            unsupported_mandatory(Some(&mandatory)),
            Some("E99_other".into())
        );
    }
}
