//! Every Kxi-1 / Kxi-1' body qkdni sends or answers, built by the real code paths, is
//! valid against the repository's rendering of ETSI GS QKD 020 V1.1.1's schemas
//! (`schemas/etsi020/etsi-gs-qkd-020-v1.1.1.schema.json`), checked with `jsonschema`.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::ext_keys::ack_for;
use super::messages::*;
use super::problem::{Kind, Problem};
use super::send::{qx_container, void_container};
use crate::km::config::{LinkConfig, LinkEnd, LinkKind};
use crate::km::kma::relay::messages::{RelayBody, RelayedKey, RELAY_VERSION};

const SCHEMA: &str = include_str!("../../../schemas/etsi020/etsi-gs-qkd-020-v1.1.1.schema.json");

/// Validates `value` against `$defs/<def>` of the schema; panics with every error.
pub(super) fn assert_valid(def: &str, value: &impl Serialize) {
    let mut schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    assert!(schema["$defs"].get(def).is_some(), "no $defs/{def}");
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let instance = serde_json::to_value(value).expect("serializes");
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{def} {instance}: {errors:?}");
}

fn refused(def: &str, value: Value) -> bool {
    let mut schema: Value = serde_json::from_str(SCHEMA).unwrap();
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    !jsonschema::validator_for(&schema).unwrap().is_valid(&value)
}

pub(super) fn link(kind: LinkKind) -> LinkConfig {
    LinkConfig {
        id: "qx1".into(),
        peer: "gb1".into(),
        peer_kma: "https://127.0.0.1:9443".into(),
        end: LinkEnd::Tx,
        rate_bps: None,
        model: None,
        capacity_blocks: 1000,
        peer_domain: Some("B".into()),
        kind,
    }
}

pub(super) fn body(first_hop: bool) -> RelayBody {
    RelayBody {
        version: RELAY_VERSION,
        relay_id: Uuid::new_v4(),
        link: "qx1".into(),
        origin_km: "a1".into(),
        dest_km: "b1".into(),
        master_sae: "sae-a1".into(),
        slave_saes: vec!["sae-b1".into()],
        key_size: 256,
        hops_left: 30,
        keys: (0..3u64)
            .map(|i| RelayedKey {
                key_id: Uuid::new_v4(),
                pad: vec![2 * i, 2 * i + 1],
                ciphertext: (!first_hop)
                    .then(|| "q83vEjRWeJASNFZ4kBI0Vq83vEjRWeJASNFZ4kBI0Vg=".into()),
            })
            .collect(),
        extension_optional: Some(extension_of("E99_vendor_trace", "t-1")),
        iwn_km: None,
    }
}

#[test]
fn the_schema_refuses_what_the_standard_refuses() {
    assert!(refused(
        "void_container",
        serde_json::json!({"key_ids": [], "initiator_sae_id": "a", "target_sae_ids": ["b"]})
    ));
    assert!(!refused(
        "void_container",
        serde_json::json!({"key_ids": [], "initiator_sae_id": "a", "target_sae_ids": ["b"], "all_confirmation": true})
    ));
    assert!(refused(
        "ack_container",
        serde_json::json!({"key_id_container": [{"key_id": Uuid::nil()}], "ack_status": "done", "initiator_sae_id": "a", "target_sae_ids": ["b"]})
    ));
    assert!(refused(
        "ext_key_container",
        serde_json::json!({"keys": [{"key_id": "x", "value": "AA=="}], "initiator_sae_id": "a", "target_sae_ids": ["b"]})
    ));
    assert!(refused(
        "ext_key_container",
        serde_json::json!({"keys": [{"key_id": Uuid::nil(), "value": "AA=="}], "initiator_sae_id": "a", "target_sae_ids": ["b"], "extension_optional": {"qkdni": 1}})
    ));
    assert!(refused(
        "problem_details",
        serde_json::json!({"type": "https://example.com/x", "status": 400, "title": "x"})
    ));
}

#[test]
fn kxi_1_requests_over_a_qx_link_are_ext_key_containers() {
    for first_hop in [true, false] {
        let container = qx_container(
            "https://127.0.0.1:8443/kmapi/v1/ext_keys/ack".into(),
            &link(LinkKind::Qkd),
            &body(first_hop),
        );
        assert_valid("ext_key_container", &container);
    }
}

#[test]
fn acknowledgements_and_voids_are_the_standards_containers() {
    let body = body(false);
    let ids: Vec<Uuid> = body.keys.iter().map(|k| k.key_id).collect();
    let mut acks = Vec::new();
    for status in [
        AckStatus::Relayed,
        AckStatus::Failed,
        AckStatus::Voided,
        AckStatus::FailedToVoid,
        AckStatus::KeyNotPresent,
    ] {
        acks.push(ack_for(
            &ids,
            &body.master_sae,
            &body.slave_saes,
            status,
            Some("x".repeat(5000)),
            Some(AckExtension {
                relay_id: body.relay_id,
                link: "qx1".into(),
                delivered: ids.len(),
                hops: 2,
            }),
        ));
        acks.push(ack_for(
            &ids,
            &body.master_sae,
            &body.slave_saes,
            status,
            None,
            None,
        ));
    }
    assert_valid("ack_containers", &acks);
    let void = void_container(
        &link(LinkKind::Qkd),
        body.relay_id,
        &ids,
        &body.master_sae,
        &body.slave_saes,
    );
    assert_valid("void_container", &void);
    assert_valid("version_container", &VersionContainer::ours());
}

#[test]
fn every_problem_is_a_problem_details_body() {
    let kinds = [
        Kind::MissingParameters,
        Kind::KeyRoutingError,
        Kind::VoidRequestNotUnderstood,
        Kind::NoKeyIdsOrConfirmation,
        Kind::AckNotUnderstood,
        Kind::KeyNotPresent,
        Kind::Unauthorized,
        Kind::Timeout,
        Kind::ServerSideGeneralError,
        Kind::InsufficientKeyMaterial,
        Kind::UnsupportedMandatoryExtension,
    ];
    for kind in kinds {
        assert_valid("problem_details", &Problem::new(kind, "detail", "text"));
    }
    let errors = [
        crate::km::kma::relay::error::RelayError::Rejected("message authentication failed".into()),
        crate::km::kma::relay::error::RelayError::NoRoute("b9".into()),
        crate::km::kma::relay::error::RelayError::Backlog("full".into()),
    ];
    for error in &errors {
        assert_valid("problem_details", &super::ext_keys::relay_problem(error));
    }
}

#[test]
fn kxi_1_prime_transfers_are_ext_key_containers_of_plain_keys() {
    use crate::km::kma::reserve::plan::Hop;
    use base64::Engine;
    let hop = Hop {
        relay_id: Uuid::new_v4(),
        origin_km: "a1".into(),
        dest_km: "b1".into(),
        master_sae: "sae-a1-1".into(),
        slave_saes: vec!["sae-b1-1".into()],
        key_size: 264,
        hops_left: 28,
        extension_optional: Some(extension_of("E99_vendor_trace", "t-1")),
        iwn_km: None,
    };
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    let keys = [
        zeroize::Zeroizing::new(vec![1u8; 33]),
        zeroize::Zeroizing::new(vec![2u8; 33]),
    ];
    let container = super::transfer::transfer_container(
        "https://127.0.0.1:8443/kmapi/v1/ext_keys/ack".into(),
        &link(LinkKind::Transfer),
        &hop,
        &ids,
        &keys,
    );
    assert_valid("ext_key_container", &container);
    // the keys themselves, and the optional extensions passed on unchanged
    let value = crate::km::kma::relay::messages::b64()
        .decode(&container.keys[1].value)
        .unwrap();
    assert_eq!(value, vec![2u8; 33]);
    assert_eq!(container.extension_optional, hop.extension_optional);
    let relay: RelayExtension = member(container.extension_mandatory.as_ref(), EXT_RELAY)
        .unwrap()
        .unwrap();
    assert_eq!((relay.key_size, relay.hops_left), (264, 28));
}
