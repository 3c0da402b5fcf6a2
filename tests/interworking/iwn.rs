//! Interworking through interworking nodes (Y.3818 6.2, 9.2) over real processes: two domains
//! of seven KMs, two IWNs each running KM-A and KM-B as separate processes joined by a
//! transfer link, both controllers agreeing routes through an IWN over Cxi' (controllers
//! hosted in the IWN) or Cxi, and moving key transfer to the other IWN on a fault.

use serde_json::{json, Value};

use super::{events, kind, origin_session, wait_event, wait_manager_event};
use crate::common::Bed;

const TOPOLOGY: &str = "two-domain-iwn.toml";

/// The segment session of domain B.
async fn segment_session(bed: &Bed) -> Value {
    let sessions = bed.controller_get("B", "/api/v1/sessions").await;
    sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interworking"]["role"] == "segment")
        .cloned()
        .expect("an interworking segment in B")
}

/// Pauses or resumes key generation on `link` through domain `domain`'s controller.
/// A's origin session and B's segment once both carry the same Cxi transaction and A's
/// crosses `qx_link`: each controller applies its own commit (B's after its event, A's after
/// B's answer), so their views follow the events a moment later, and a route short of the
/// session's demand is agreed again at A's next polls, each time in a new transaction.
async fn settled(bed: &Bed, qx_link: &str) -> (Value, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let find = |sessions: Value, role: &str| {
            (sessions.as_array().into_iter().flatten())
                .find(|s| s["interworking"]["role"] == role)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let origin = find(bed.controller_get("A", "/api/v1/sessions").await, "origin");
        let segment = find(bed.controller_get("B", "/api/v1/sessions").await, "segment");
        let agreed = origin["interworking"]["transaction"].as_str();
        if agreed.is_some()
            && segment["interworking"]["transaction"].as_str() == agreed
            && origin["interworking"]["qx_link"] == qx_link
        {
            return (origin, segment);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agreed route over {qx_link} in both domains: A {origin:#}, B {segment:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn set_generation(bed: &Bed, domain: &str, link: &str, enabled: bool) -> u16 {
    let (http, rest, token) = bed.controller(domain);
    http.put(format!("{rest}/api/v1/links/{link}/generation"))
        .bearer_auth(token)
        .json(&json!({ "enabled": enabled }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Both controllers agree a route through iwn1 (fewest hops from a1), then, once the QKD link
/// into iwn1's KM-A is paused by controller A, a route through iwn2.
async fn agree_then_move_to_the_other_iwn(bed: &Bed) {
    let session = bed.create_session("sae-a1-1", "sae-b1-1").await;
    let iw = &session["interworking"];
    assert_eq!(iw["qx_link"], "iwn1-kxi1p", "{session:#}");
    assert_eq!(iw["local_gateway"], "iwn1-a");
    assert_eq!(iw["peer_gateway"], "iwn1-b");
    let path: Vec<&str> = session["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(path.first(), Some(&"a1"));
    assert!(path.contains(&"iwn1-a"), "{path:?}");
    let segment = segment_session(bed).await;
    assert_eq!(segment["interworking"]["transaction"], iw["transaction"]);
    assert_eq!(segment["interworking"]["local_gateway"], "iwn1-b");
    // KM-B of iwn1 holds B's segment: its relay route toward b1, and sae-a1-1 as A's SAE
    let routes = bed.controller_get("B", "/api/v1/topology").await;
    let km_b = &routes["nodes"]["iwn1-b"];
    assert!(km_b["routes"]["b1"].is_string(), "{km_b:#}");
    assert_eq!(km_b["foreign_saes"]["sae-a1-1"]["domain"], "A");

    // procedure 2: A pauses key generation on the QKD link into iwn1's KM-A
    let (skip_a, skip_b) = (events(bed, "A").await.len(), events(bed, "B").await.len());
    assert_eq!(set_generation(bed, "A", "a2-iwn1-a", false).await, 204);
    let reroute = wait_event(bed, "A", skip_a, "reroute", |e| kind(e, "reroute")).await;
    let transaction = reroute["transaction"].as_str().expect("a Cxi transaction");
    wait_event(bed, "B", skip_b, "commit of the same transaction", |e| {
        kind(e, "interworking-commit") && e["transaction"] == transaction
    })
    .await;
    let (_, segment) = settled(bed, "iwn2-kxi1p").await;
    assert_eq!(segment["interworking"]["local_gateway"], "iwn2-b");
    assert!(events(bed, "A")
        .await
        .iter()
        .any(|e| kind(e, "key-generation") && e["detail"].as_str().unwrap().contains("a2-iwn1-a")));
    assert_eq!(set_generation(bed, "A", "a2-iwn1-a", true).await, 204);
    // a link of the other domain, or none, is not found
    assert_eq!(set_generation(bed, "A", "b2-b1", false).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_cxi_prime_both_controllers_agree_routes_through_an_iwn_and_move_to_the_other() {
    let bed = Bed::up(TOPOLOGY);
    // iwn1 hosts both controllers and managers (Cxi', Mxi')
    let iwn1 = &bed.endpoints.iwns["iwn1"];
    assert!(iwn1.hosts_control);
    assert_eq!(iwn1.kms[0].node, "iwn1-a");
    assert_eq!(iwn1.kms[1].domain, "B");
    assert_eq!(iwn1.transfer_link, "iwn1-kxi1p");
    assert_eq!(iwn1.controllers.len(), 2);
    assert_eq!(iwn1.managers.len(), 2);
    assert!(!bed.endpoints.iwns["iwn2"].hosts_control);
    // KM-A models its transfer link; it is set by its configuration file
    let netconf = bed.netconf("iwn1-a").await;
    let data = netconf
        .get(Some(
            "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><transfer-links/></key-manager></qkd_node>",
        ))
        .await
        .unwrap();
    for expected in [
        "<link-id>iwn1-kxi1p</link-id>",
        "<peer-node>iwn1-b</peer-node>",
        "<peer-domain>B</peer-domain>",
        "<oper-state>up</oper-state>",
    ] {
        assert!(data.contains(expected), "{expected} in {data}");
    }
    let change = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><transfer-links><transfer-link><link-id>iwn1-kxi1p</link-id><peer-node>b2</peer-node></transfer-link></transfer-links></key-manager></qkd_node>";
    let refused = netconf.edit_config("running", change).await.unwrap_err();
    assert!(
        refused.to_string().contains("configuration file"),
        "{refused}"
    );
    agree_then_move_to_the_other_iwn(&bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_cxi_from_outside_the_iwns_the_same_agreement_holds() {
    let text = std::fs::read_to_string(crate::common::topology(TOPOLOGY))
        .unwrap()
        .replace("control = true", "control = false");
    let bed = Bed::up_text_controlled(&text);
    assert!(bed.endpoints.iwns.values().all(|i| !i.hosts_control));
    assert!(bed.endpoints.iwns["iwn1"].controllers.is_empty());
    agree_then_move_to_the_other_iwn(&bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_iwn_km_dies_both_controllers_move_to_the_other_iwn() {
    let bed = Bed::up(TOPOLOGY);
    let session = bed.create_session("sae-a1-1", "sae-b1-1").await;
    assert_eq!(session["interworking"]["qx_link"], "iwn1-kxi1p");
    for (victim, domain) in [("iwn1-b", "B"), ("iwn2-a", "A")] {
        let (skip_a, skip_b) = (events(&bed, "A").await.len(), events(&bed, "B").await.len());
        bed.cli(&["node", "stop", victim, "--kill"]);
        let reroute = wait_event(&bed, "A", skip_a, "reroute", |e| kind(e, "reroute")).await;
        let transaction = reroute["transaction"].as_str().expect("a Cxi transaction");
        wait_event(&bed, "B", skip_b, "commit of the same transaction", |e| {
            kind(e, "interworking-commit") && e["transaction"] == transaction
        })
        .await;
        let expected = if victim == "iwn1-b" {
            "iwn2-kxi1p"
        } else {
            "iwn1-kxi1p"
        };
        eprintln!("after {victim} ({domain}) died: waiting for {expected}");
        settled(&bed, expected).await;
        // the IWN KM comes back; the next fault takes the other IWN down
        bed.cli(&["node", "start", victim]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_failure_goes_through_both_managers_and_transfer_moves_to_the_other_iwn() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 32)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    assert_eq!(
        origin_session(&bed).await["interworking"]["qx_link"],
        "iwn1-kxi1p"
    );
    // KM-B of the IWN in use crashes: the next transfer over Kxi-1' fails
    bed.cli(&["node", "stop", "iwn1-b", "--kill"]);
    let skip_a = events(&bed, "A").await.len();
    let failed = bed
        .client("sae-a1-1")
        .enc_keys("sae-b1-1", &crate::request(1))
        .await;
    assert!(failed.is_err(), "no transfer through a dead KM-B");
    // procedure 9.2-3: KMLM-A -> XLMO-A -> (Mxi') -> XLMO-B, one relay id in both domains;
    // both QCLMs decide
    let reported = wait_manager_event(&bed, "A", "kmlm-relay-failure").await;
    let relay_id = reported["relay_id"].clone();
    assert!(!relay_id.is_null(), "{reported:#}");
    wait_manager_event(&bed, "A", "xlmo-fault-sent").await;
    let received = wait_manager_event(&bed, "B", "xlmo-fault-received").await;
    assert_eq!(received["relay_id"], relay_id, "the same failure at B");
    wait_manager_event(&bed, "A", "qclm-decision").await;
    wait_manager_event(&bed, "B", "qclm-decision").await;
    // and key transfer goes on through iwn2, both controllers agreeing
    let reroute = wait_event(&bed, "A", skip_a, "reroute", |e| kind(e, "reroute")).await;
    let transaction = reroute["transaction"].as_str().unwrap().to_owned();
    wait_event(&bed, "B", 0, "commit", |e| {
        kind(e, "interworking-commit") && e["transaction"] == transaction.as_str()
    })
    .await;
    settled(&bed, "iwn2-kxi1p").await;
    bed.wait_path(
        &["a1", "a3", "a5", "iwn2-a", "iwn2-b", "b3", "b5", "b1"],
        16,
    )
    .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
}
