//! QoS admission of new sessions at the controllers (issue 14 part 3), over the real
//! two-domain testbed: classes configured over NETCONF on both controllers, a guarantee no
//! link can carry refused with the problem JSON naming the link and the figures, a class the
//! peer does not expose refused by the peer's vote with nothing half-agreed, and an exposed
//! class admitted with keys flowing across the domains.

use std::time::Duration;

use super::common::{eventually, Bed};
use serde_json::{json, Value};

const TOPOLOGY: &str = "two-domain-gwn.toml";
const NS: &str = "urn:qkdni:yang:qkdni-controller";

/// POSTs a new session to domain A's controller: (status, body).
async fn post_session(bed: &Bed, master: &str, slave: &str) -> (u16, Value) {
    let (http, rest, token) = bed.controller("A");
    let response = http
        .post(format!("{rest}/api/v1/sessions"))
        .bearer_auth(token)
        .json(&json!({"master_sae": master, "slave_sae": slave, "rate_bps": 0.0}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Merges `inner` into `domain`'s controller configuration over NETCONF, as an operator.
async fn configure(bed: &Bed, domain: &str, inner: &str) {
    bed.controller_netconf(domain, bed.endpoints.netconf_logins(domain).0)
        .await
        .edit_config(
            "running",
            &format!("<controller xmlns=\"{NS}\">{inner}</controller>"),
        )
        .await
        .unwrap_or_else(|e| panic!("configuring {domain}: {e}"));
}

fn class(name: &str, guaranteed: u64) -> String {
    format!("<class><name>{name}</name><priority>5</priority><guaranteed-rate>{guaranteed}</guaranteed-rate></class>")
}

/// Waits until `domain`'s controller has polled a key rate for every link of its domain.
async fn wait_rates(bed: &Bed, domain: &str) -> Value {
    eventually(
        &format!("{domain}: a key rate for every link"),
        Duration::from_millis(100),
        || async {
            let links = bed.controller_get(domain, "/api/v1/links").await;
            if links.as_array().is_some_and(|l| {
                !l.is_empty() && l.iter().all(|l| l["rate_bps"].as_f64() > Some(0.0))
            }) {
                Ok(links)
            } else {
                Err(links)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_admitted_by_qos_class_in_both_domains() {
    let bed = Bed::up(TOPOLOGY);
    let links = wait_rates(&bed, "A").await;
    let link_ids: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["id"].as_str())
        .collect();

    // A: a class guaranteeing more than any link's key rate for one pair of A's SAEs; peer
    // domain B's sessions in class "gold", which B does not expose to A
    let huge = 1_000_000_000u64;
    configure(
        &bed,
        "A",
        &format!(
            "<qos>{}{}{}<application-pair><sae-a>sae-a1-1</sae-a><sae-b>sae-a4-1</sae-b><class>huge</class></application-pair>\
             <peer-domain><domain>B</domain><class>gold</class></peer-domain><default-class>bronze</default-class></qos>",
            class("huge", huge),
            class("gold", 1000),
            class("bronze", 0)
        ),
    )
    .await;
    // B: the same classes; A's sessions may use bronze only
    configure(
        &bed,
        "B",
        &format!(
            "<qos>{}{}<default-class>bronze</default-class></qos>\
             <interworking><peer><domain>A</domain><qos-class>bronze</qos-class></peer></interworking>",
            class("gold", 1000),
            class("bronze", 0)
        ),
    )
    .await;

    // an invalid class is an rpc-error and changes nothing (validated with the whole edit)
    let refused = bed
        .controller_netconf("A", bed.endpoints.netconf_logins("A").0)
        .await
        .edit_config(
            "running",
            &format!(
                "<controller xmlns=\"{NS}\"><policy>shortest</policy><qos><class><name>huge</name>\
                 <maximum-rate>10</maximum-rate></class></qos></controller>"
            ),
        )
        .await;
    let error = format!(
        "{:?}",
        refused.expect_err("maximum below guarantee refused")
    );
    assert!(error.contains("maximum rate"), "{error}");
    let running = bed
        .controller_netconf("A", bed.endpoints.netconf_logins("A").0)
        .await
        .get_config(
            "running",
            Some(&format!(
                "<controller xmlns=\"{NS}\"><policy/></controller>"
            )),
        )
        .await
        .unwrap();
    assert!(!running.contains("shortest"), "{running}");

    // a guarantee no link can carry: refused, the problem naming the link and the figures
    let (status, problem) = post_session(&bed, "sae-a1-1", "sae-a4-1").await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        problem["type"]
            .as_str()
            .map(|t| t.ends_with("qos-admission")),
        Some(true),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&huge.to_string()) && detail.contains("huge"),
        "{detail}"
    );
    assert!(
        link_ids
            .iter()
            .any(|l| detail.contains(&format!("link {l}:"))),
        "{detail}"
    );
    // the same pair in the other class is admitted (nothing was held for the refusal)
    let (status, _) = post_session(&bed, "sae-a1-1", "sae-a1-2").await;
    assert_eq!(status, 201);

    // gold is not exposed to A by B: B votes no, nothing is agreed on either side
    let (status, problem) = post_session(&bed, "sae-a1-1", "sae-b1-1").await;
    assert_ne!(status, 201, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("QoS class gold is not exposed to A"),
        "{problem}"
    );
    let b_sessions = bed.controller_get("B", "/api/v1/sessions").await;
    assert_eq!(b_sessions, json!([]), "B holds no segment");
    let a_sessions = bed.controller_get("A", "/api/v1/sessions").await;
    assert!(
        !a_sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["slave_sae"] == "sae-b1-1"),
        "{a_sessions}"
    );

    // B's sessions in bronze, which B exposes: admitted by both, and keys flow
    configure(
        &bed,
        "A",
        "<qos><peer-domain><domain>B</domain><class>bronze</class></peer-domain></qos>",
    )
    .await;
    let (status, session) = post_session(&bed, "sae-a1-1", "sae-b1-1").await;
    assert_eq!(status, 201, "{session}");
    let state = bed
        .controller_netconf("A", bed.endpoints.netconf_logins("A").0)
        .await
        .get(Some(&format!(
            "<controller xmlns=\"{NS}\"><qos/></controller>"
        )))
        .await
        .unwrap();
    assert!(state.contains("<admitted-sessions>"), "{state}");
    assert_eq!(session["interworking"]["role"], "origin", "{session}");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 16)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 16)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
}

/// `ga2`'s KM QoS policy (`key-manager/qos`): class gold guaranteeing `guaranteed` bit/s to
/// the pair sae-a1-1 -> sae-b1-1, bronze (no guarantee) for the rest.
fn speaker_policy(guaranteed: u64) -> String {
    format!(
        r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos>
<class><name>gold</name><priority>5</priority><guaranteed-rate>{guaranteed}</guaranteed-rate></class>
<class><name>bronze</name><priority>1</priority></class>
<application-pair><sae-a>sae-a1-1</sae-a><sae-b>sae-b1-1</sae-b><class>gold</class></application-pair>
<default-class>bronze</default-class>
</qos></key-manager></qkd_node>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_domains_speaker_admits_sessions_by_qos_class() {
    // A is distributed: its speaker ga2 admits with its KM's classes and the link state
    let bed = Bed::up("gwn-distributed-centralized.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 16)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 16)
        .await;
    bed.netconf("ga2")
        .await
        .edit_config("running", &speaker_policy(1_000_000_000))
        .await
        .unwrap();
    let request = qkdni::etsi014::KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    // no link of A carries the guarantee: every crossing is refused, no keys
    eventually(
        "the speaker refusing the session by its QoS class",
        Duration::from_millis(250),
        || async {
            let log = bed.log("ga2");
            if log.contains("interworking session not admitted")
                && log.contains("QoS admission refused on link")
            {
                Ok(())
            } else {
                Err(bed
                    .client("sae-a1-1")
                    .enc_keys("sae-b1-1", &request)
                    .await
                    .map(|k| k.keys.len()))
            }
        },
    )
    .await;
    assert!(
        bed.client("sae-a1-1")
            .enc_keys("sae-b1-1", &request)
            .await
            .is_err(),
        "keys for a session its speaker did not admit"
    );
    assert!(!bed.log("ga2").contains("interworking route agreed"));
    // B's sessions into A are admitted by the speaker too: B's prepare is refused
    eventually(
        "the speaker refusing B's prepare by its QoS class",
        Duration::from_millis(250),
        || async {
            let refused = bed.log("ga2").lines().any(|l| {
                l.contains("interworking prepare refused") && l.contains("QoS admission refused")
            });
            if refused {
                Ok(())
            } else {
                Err(bed
                    .client("sae-b1-1")
                    .enc_keys("sae-a1-1", &request)
                    .await
                    .map(|k| k.keys.len()))
            }
        },
    )
    .await;
    // a guarantee the links carry: admitted, agreed with B (which has no classes), keys flow
    bed.netconf("ga2")
        .await
        .edit_config("running", &speaker_policy(1_000))
        .await
        .unwrap();
    let keys = eventually(
        "keys once the class fits",
        Duration::from_millis(250),
        || async {
            bed.client("sae-a1-1")
                .enc_keys("sae-b1-1", &request)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bed
        .client("sae-b1-1")
        .dec_keys("sae-a1-1", &ids)
        .await
        .unwrap();
    assert_eq!(fetched.keys[0].key, keys.keys[0].key);
    assert!(bed.log("ga2").contains("interworking route agreed"));
}
