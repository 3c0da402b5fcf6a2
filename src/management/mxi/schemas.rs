//! JSON Schemas (draft 2020-12) of the Mxi messages, generated from the Rust types.
//!
//! The published copies are `schemas/mxi/v1/fault-report.json` and `report-pack.json`; a
//! test checks that they are what the types generate. After changing a message type, run
//! `QKDNI_UPDATE_SCHEMAS=1 cargo test --lib management::schemas` to rewrite them (and bump
//! the Mxi version when the change is not backward compatible).

use super::messages::{FaultReport, ReportPack, UsageReply, UsageSummary};

/// Where the schemas of Mxi version 1 are published, relative to the crate root.
pub const SCHEMA_DIR: &str = "schemas/mxi/v1";

/// Every schema: (file name, schema).
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "fault-report.json",
            with_id(
                schemars::schema_for!(FaultReport),
                "urn:qkdni:mxi:v1:fault-report",
            ),
        ),
        (
            "report-pack.json",
            with_id(
                schemars::schema_for!(ReportPack),
                "urn:qkdni:mxi:v1:report-pack",
            ),
        ),
        (
            "usage-summary.json",
            with_id(
                schemars::schema_for!(UsageSummary),
                "urn:qkdni:mxi:v1:usage-summary",
            ),
        ),
        (
            "usage-reply.json",
            with_id(
                schemars::schema_for!(UsageReply),
                "urn:qkdni:mxi:v1:usage-reply",
            ),
        ),
    ]
}

fn with_id(schema: schemars::Schema, id: &str) -> serde_json::Value {
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        object.insert("$id".into(), id.into());
    }
    value
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn published_schemas_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_DIR);
        let update = std::env::var_os("QKDNI_UPDATE_SCHEMAS").is_some();
        for (file, schema) in all() {
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
                std::fs::write(&path, text).unwrap();
            }
            let published: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                published, schema,
                "{file} differs from the Rust types; see the module docs"
            );
        }
    }

    #[test]
    fn schemas_say_what_the_wire_has() {
        let schemas = all();
        let fault = &schemas[0].1;
        assert_eq!(fault["properties"]["version"]["const"], 1);
        assert_eq!(fault["additionalProperties"], false);
        // every field serialized is a property of the schema, and every required one is sent
        let example = serde_json::to_value(super::super::messages::tests::fault()).unwrap();
        for (schema, example) in [
            (fault, example),
            (
                &schemas[1].1,
                serde_json::to_value(super::super::messages::tests::pack()).unwrap(),
            ),
        ] {
            let properties = schema["properties"].as_object().unwrap();
            let sent = example.as_object().unwrap();
            assert!(sent.keys().all(|k| properties.contains_key(k)));
            for required in schema["required"].as_array().unwrap() {
                assert!(sent.contains_key(required.as_str().unwrap()));
            }
        }
    }
}
