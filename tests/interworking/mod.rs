//! Interworking of two QKDNs through gateway nodes (Y.3818 9.1), over real processes: two
//! domains with their own CA, controller and manager, two GWN pairs, Kxi-1 relays across
//! the Qx links, Cxi route agreement between the controllers, Mxi fault management.

use std::time::Duration;

use serde_json::Value;

use super::common::{eventually, Bed};
use super::request;

mod iwn;
mod iwn_transfer;
mod matrix;

const TOPOLOGY: &str = "two-domain-gwn.toml";

/// The events of `domain`'s controller.
async fn events(bed: &Bed, domain: &str) -> Vec<Value> {
    bed.controller_events(domain).await
}

/// Waits until `domain`'s controller logged an event after the first `skip` that matches.
async fn wait_event(
    bed: &Bed,
    domain: &str,
    skip: usize,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        &format!("{domain}: {what}"),
        Duration::from_millis(100),
        || async {
            let events = events(bed, domain).await;
            match events.iter().skip(skip).find(|e| matches(e)) {
                Some(e) => Ok(e.clone()),
                None => Err(events),
            }
        },
    )
    .await
}

fn kind(e: &Value, k: &str) -> bool {
    e["kind"] == k
}

/// Waits until both GWN pairs' paths from a1 to b1 hold key.
async fn wait_both_paths(bed: &Bed, blocks: usize) {
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], blocks)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], blocks)
        .await;
}

/// The other Qx link of the testbed.
fn other_qx(qx: &str) -> &'static str {
    if qx == "qx1" {
        "qx2"
    } else {
        "qx1"
    }
}

/// `request` carrying `body` signed as the Cxi party `stem` of the testbed PKI (its
/// certificate's key), as a peer controller signs its Cxi messages.
fn signed_cxi(
    request: reqwest::RequestBuilder,
    pki: &std::path::Path,
    stem: &str,
    path: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    let signer = qkdni::nonrepudiation::cose::Signer::load(
        &pki.join(format!("{stem}.crt")),
        &pki.join(format!("{stem}.key")),
    )
    .unwrap();
    let bytes = serde_json::to_vec(body).unwrap();
    let signature = signer.sign(&bytes, &format!("POST {path}"), None).unwrap();
    request
        .header("content-type", "application/json")
        .header(
            qkdni::nonrepudiation::http::HEADER,
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                &signature,
            ),
        )
        .body(bytes)
}

/// The interworking session of the origin domain A.
async fn origin_session(bed: &Bed) -> Value {
    let sessions = bed.controller_get("A", "/api/v1/sessions").await;
    sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interworking"]["role"] == "origin")
        .cloned()
        .expect("an interworking session in A")
}

/// Cuts `link` and waits until both controllers agreed on a new route: A's reroute and B's
/// commit carry the same Cxi transaction. Returns A's reroute event.
async fn cut_and_agree(bed: &Bed, link: &str) -> Value {
    let (skip_a, skip_b) = (events(bed, "A").await.len(), events(bed, "B").await.len());
    bed.cli(&["link", "down", link]);
    let reroute = wait_event(bed, "A", skip_a, "reroute", |e| kind(e, "reroute")).await;
    let transaction = reroute["transaction"].as_str().expect("a Cxi transaction");
    wait_event(bed, "B", skip_b, "commit of the same transaction", |e| {
        kind(e, "interworking-commit") && e["transaction"] == transaction
    })
    .await;
    let a_commit = events(bed, "A").await;
    assert!(a_commit
        .iter()
        .any(|e| kind(e, "interworking-commit") && e["transaction"] == transaction));
    reroute
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cross_the_domains_and_both_controllers_agree_on_every_reroute() {
    let bed = Bed::up(TOPOLOGY);
    wait_both_paths(&bed, 64).await;
    // procedure 1: KM a1 does not know sae-b1-1, asks controller A, which agrees a route
    // with B over Cxi; keys are relayed hop by hop across qx1 (Kxi-1)
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let session = origin_session(&bed).await;
    let iw = &session["interworking"];
    let path = session["path"].as_array().unwrap();
    assert_eq!(path[0], "a1");
    assert_eq!(path[path.len() - 2], iw["local_gateway"]);
    assert_eq!(path[path.len() - 1], iw["peer_gateway"]);
    assert_eq!(
        session["links"].as_array().unwrap().last(),
        Some(&iw["qx_link"])
    );
    assert!(
        bed.log(iw["peer_gateway"].as_str().unwrap())
            .contains("kxi-1"),
        "the relay crossed Kxi-1"
    );
    let b_events = events(&bed, "B").await;
    assert!(b_events.iter().any(|e| kind(e, "interworking-commit")
        && e["transaction"] == session["interworking"]["transaction"]));

    // a fault inside A
    let a_link = session["links"][0].as_str().unwrap().to_owned();
    let reroute = cut_and_agree(&bed, &a_link).await;
    assert!(reroute["duration_ms"].as_f64().unwrap() > 0.0);
    let session = origin_session(&bed).await;
    assert!(!session["links"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == a_link.as_str()));
    let path: Vec<String> = serde_json::from_value(session["path"].clone()).unwrap();
    bed.wait_path(&path.iter().map(String::as_str).collect::<Vec<_>>(), 64)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;

    // a fault inside B, on the segment now in use: B reports it, A re-proposes, B agrees
    let segment = bed.controller_get("B", "/api/v1/sessions").await[0].clone();
    let b_link = segment["links"][0].as_str().unwrap().to_owned();
    cut_and_agree(&bed, &b_link).await;
    assert!(events(&bed, "B")
        .await
        .iter()
        .any(|e| kind(e, "segment-fault")));
    let segment = bed.controller_get("B", "/api/v1/sessions").await[0].clone();
    assert!(!segment["links"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == b_link.as_str()));
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;

    // a fault on the active Qx link: the relay moves to the other GWN pair; operators of B
    // watch the agreement as NETCONF notifications of controller B
    let qx = origin_session(&bed).await["interworking"]["qx_link"]
        .as_str()
        .unwrap()
        .to_owned();
    bed.cli(&["link", "up", &a_link]);
    bed.cli(&["link", "up", &b_link]);
    let (_session, mut notifications) = controller_notifications(&bed, "B").await;
    let reroute = cut_and_agree(&bed, &qx).await;
    let transaction = reroute["transaction"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = notifications.recv().await.unwrap();
            if n.contains("<kind>interworking-commit</kind>") && n.contains(&transaction) {
                break;
            }
        }
    })
    .await
    .expect("an interworking-commit notification from controller B");
    let session = origin_session(&bed).await;
    assert_ne!(session["interworking"]["qx_link"], qx.as_str());
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_half_agreed_route_while_the_peer_controller_is_away() {
    let bed = Bed::up(TOPOLOGY);
    wait_both_paths(&bed, 64).await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    let before = bed.controller_get("B", "/api/v1/sessions").await[0].clone();

    bed.cli(&["node", "stop", "controller-B"]);
    let skip = events(&bed, "A").await.len();
    let a_link = origin_session(&bed).await["links"][0]
        .as_str()
        .unwrap()
        .to_owned();
    bed.cli(&["link", "down", &a_link]);
    let failed = wait_event(&bed, "A", skip, "reroute failure", |e| {
        kind(e, "reroute-failed")
    })
    .await;
    assert!(
        failed["detail"].as_str().unwrap().contains("unreachable"),
        "{failed}"
    );
    let session = origin_session(&bed).await;
    assert_eq!(session["state"], "unroutable");
    // A removed its relay routes toward b1 and installed no new ones
    let routes = bed.controller_get("A", "/api/v1/routes").await;
    for node in ["a1", "a2", "a3", "ga1", "ga2"] {
        assert!(routes[node].get("b1").is_none(), "{node}: {routes}");
    }
    assert!(!events(&bed, "A")
        .await
        .iter()
        .skip(skip)
        .any(|e| kind(e, "interworking-commit")));
    // keys are refused meanwhile, never half-relayed
    assert!(bed
        .client("sae-a1-1")
        .enc_keys("sae-b1-1", &request(1))
        .await
        .is_err());

    // B comes back: the session is agreed again and keys flow
    bed.cli(&["node", "start", "controller-B"]);
    let skip_b = 0;
    wait_event(&bed, "A", skip, "reroute", |e| kind(e, "reroute")).await;
    let after = wait_event(&bed, "B", skip_b, "commit", |e| {
        kind(e, "interworking-commit") && e["transaction"] != before["interworking"]["transaction"]
    })
    .await;
    assert_eq!(
        origin_session(&bed).await["interworking"]["transaction"],
        after["transaction"]
    );
    let path: Vec<String> =
        serde_json::from_value(origin_session(&bed).await["path"].clone()).unwrap();
    bed.wait_path(&path.iter().map(String::as_str).collect::<Vec<_>>(), 64)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_messages_are_refused_and_b_keeps_its_links_to_itself() {
    let bed = Bed::up(TOPOLOGY);
    wait_both_paths(&bed, 16).await;
    bed.deliver("sae-a1-1", "sae-b1-1", 1).await;
    let pki = bed.dir.join("pki");
    let files = |stem: &str| qkdni::tls::TlsFiles {
        cert: pki.join(format!("{stem}.crt")),
        key: pki.join(format!("{stem}.key")),
        ca: vec![bed.endpoints.ca_cert.clone()],
        peer_cas: Vec::new(),
    };
    let client =
        |stem: &str| qkdni::tls::https_client(&files(stem), Duration::from_secs(10)).unwrap();
    let cxi_a = bed.endpoints.controller("A").unwrap().cxi.clone().unwrap();

    // each domain its own NETCONF secrets: A's operator password does not open B's KMs
    let (admin_a, viewer_a) = bed.endpoints.netconf_logins("A");
    let (admin_b, viewer_b) = bed.endpoints.netconf_logins("B");
    assert_ne!(admin_a.password, admin_b.password);
    assert_ne!(viewer_a.password, viewer_b.password);
    assert!(bed.netconf_as("gb1", admin_a, false).await.is_err());
    bed.netconf_as("gb1", admin_b, false).await.unwrap();
    // the failed login is a security event of gb1, which B's manager hears
    let event = wait_manager_event(&bed, "B", "kmlm-security-event").await;
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .starts_with("gb1: NETCONF login"),
        "{event}"
    );

    // Cxi: only controller B may talk to controller A's Cxi server
    for (who, http) in [
        ("A's operator", client("operator-A")),
        ("B's operator", client("operator-B")),
        ("a KM of B", client("km-gb1")),
        ("nobody", bed.anonymous_https()),
    ] {
        let response = http
            .get(format!("{cxi_a}/cxi/v1/abstract-topology"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{who}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:qkdni:problem:not-a-peer");
    }
    // the peer controller itself, with a malformed or wrongly versioned message: signed by
    // B (its certificate's key) it is read and refused as malformed; unsigned it is not even read
    let controller_b = client("controller-B");
    let signed_by_b = |path: &str, body: &Value| {
        let request = controller_b.post(format!("{cxi_a}{path}"));
        signed_cxi(request, &pki, "controller-B", path, body).send()
    };
    for body in [
        serde_json::json!({"version": 1, "domain": "B", "kind": "segment-fault", "detail": "x", "forged": true}),
        serde_json::json!({"version": 2, "domain": "B", "kind": "segment-fault", "detail": "x"}),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        let response = signed_by_b("/cxi/v1/status", &body).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let unsigned = controller_b
            .post(format!("{cxi_a}/cxi/v1/status"))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status(), 401, "unsigned {body}");
    }
    // the peer controller itself cannot make its SAEs or nodes take the place of A's, nor
    // take over a session of A
    let origin = origin_session(&bed).await;
    for (what, master, origin_km, session) in [
        (
            "a local SAE",
            "sae-a1-1",
            "b1",
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            "a local node",
            "sae-b4-1",
            "a2",
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            "a session of A",
            "sae-b4-1",
            "b4",
            origin["id"].as_str().unwrap().to_owned(),
        ),
    ] {
        let prepare = serde_json::json!({
            "version": 1, "transaction": uuid::Uuid::new_v4(), "session": session,
            "origin_domain": "B", "master_sae": master, "slave_sae": "sae-a1-2",
            "origin_km": origin_km, "peer_gateway": "gb1", "entry_gateway": "ga1",
            "qx_link": "qx1", "rate_bps": 0.0, "reason": "forged"});
        let response = signed_by_b("/cxi/v1/transactions", &prepare).await.unwrap();
        assert_eq!(response.status(), 409, "{what}");
        let vote: Value = response.json().await.unwrap();
        assert_eq!(vote["vote"], "refused", "{what}");
    }
    let rejected = events(&bed, "A")
        .await
        .into_iter()
        .filter(|e| kind(e, "cxi-rejected"))
        .count();
    // the six refusals logged before messages were signed, and the two unsigned statuses
    assert_eq!(rejected, 8, "every refusal is logged");

    // Kxi-1: an ext_keys request with a forged MAC, from the real peer GWN
    let gb1 = bed.endpoints.node("gb1").unwrap().kma.clone();
    let ga1 = client("km-ga1");
    let forged = serde_json::json!({
        "keys": [{"key_id": uuid::Uuid::new_v4(), "value": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "extension": {"E32473_qkdni_pad": [1]}}],
        "initiator_sae_id": "sae-a1-1", "target_sae_ids": ["sae-b1-1"],
        "ack_callback_url": format!("{}/kmapi/v1/ext_keys/ack", bed.endpoints.node("ga1").unwrap().kma),
        "extension_mandatory": {"E32473_qkdni_relay": {"version": 1, "relay_id": uuid::Uuid::new_v4(),
            "link": "qx1", "origin_km": "a1", "dest_km": "b1", "hops_left": 8, "key_size": 256}}});
    let before = bed.own_blocks("gb1", "qx1").await;
    let response = ga1
        .post(format!("{gb1}/kmapi/v1/ext_keys"))
        .header(
            "kxi-authentication",
            "block=3, tag=AAAAAAAAAAAAAAAAAAAAAA==",
        )
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert!(
        [400, 401].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    // no authentication at all, and a KM of A that is not the Qx peer
    let response = ga1
        .post(format!("{gb1}/kmapi/v1/ext_keys"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client("km-a2")
        .post(format!("{gb1}/kmapi/v1/ext_keys"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    // ETSI GS QKD 020 answers an unauthorized caller 401
    assert_eq!(response.status(), 401);
    // an A certificate never passes for a node of B on B's own relay
    let response = client("km-ga1")
        .post(format!("{gb1}/kma/v1/relay"))
        .json(&serde_json::json!({"body": "{}", "mac_seq": 0, "tag": ""}))
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), 200);
    assert!(bed.own_blocks("gb1", "qx1").await + 2 >= before);
    let log = bed.log("gb1");
    assert!(
        log.contains("no peer GWN") && log.contains("without authentication"),
        "refusals are logged"
    );

    // an orchestrator may also ask for an interworking session; deleting it removes B's
    // segment as well
    let (http, rest, token) = bed.controller("A");
    let response = http
        .post(format!("{rest}/api/v1/sessions"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"master_sae": "sae-a4-1", "slave_sae": "sae-b4-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["interworking"]["role"], "origin");
    assert_eq!(created["dst"], "b4");
    let id = created["id"].as_str().unwrap();
    let segments = bed.controller_get("B", "/api/v1/sessions").await;
    assert!(segments.as_array().unwrap().iter().any(|s| s["id"] == id));
    let response = http
        .delete(format!("{rest}/api/v1/sessions/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let segments = bed.controller_get("B", "/api/v1/sessions").await;
    assert!(!segments.as_array().unwrap().iter().any(|s| s["id"] == id));

    // segments left over at B (here: after a restart of controller B) go when A's session
    // list does not name them, and stay while it does
    bed.cli(&["node", "stop", "controller-B"]);
    bed.cli(&["node", "start", "controller-B"]);
    let origin_id = origin_session(&bed).await["id"].clone();
    let controller_a = client("controller-A");
    let cxi_b = bed.endpoints.controller("B").unwrap().cxi.clone().unwrap();
    for (list, remains) in [
        (serde_json::json!([origin_id]), true),
        (serde_json::json!([]), false),
    ] {
        let status = serde_json::json!({"version": 1, "domain": "A", "kind": "sessions",
            "sessions": list, "detail": "test"});
        let request = controller_a.post(format!("{cxi_b}/cxi/v1/status"));
        let response = signed_cxi(request, &pki, "controller-A", "/cxi/v1/status", &status)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let segments = bed.controller_get("B", "/api/v1/sessions").await;
        let present = segments
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == origin_id);
        assert_eq!(present, remains, "{list}");
    }

    // controller A knows only its own links, B's border and B's SAE locations
    let topology = bed.controller_get("A", "/api/v1/topology").await;
    let text = topology.to_string();
    for internal in [
        "b2-b1", "b2-b4", "b4-b1", "gb1-b2", "gb2-b3", "b3-b1", "\"b2\"", "\"b3\"", "\"b4\"",
    ] {
        assert!(!text.contains(internal), "A learned {internal}: {text}");
    }
    let abstract_b = controller_b_view(&bed).await;
    let text = abstract_b.to_string();
    for internal in ["b2-b1", "b2-b4", "b4-b1", "gb1-b2", "gb2-b3", "b3-b1"] {
        assert!(!text.contains(internal), "B exposed {internal}: {text}");
    }
    assert_eq!(abstract_b["border_nodes"].as_array().unwrap().len(), 2);
}

/// What controller B's Cxi server tells controller A (with A's controller certificate).
async fn controller_b_view(bed: &Bed) -> Value {
    let pki = bed.dir.join("pki");
    let files = qkdni::tls::TlsFiles {
        cert: pki.join("controller-A.crt"),
        key: pki.join("controller-A.key"),
        ca: vec![bed.endpoints.ca_cert.clone()],
        peer_cas: Vec::new(),
    };
    let http = qkdni::tls::https_client(&files, Duration::from_secs(10)).unwrap();
    let cxi_b = bed.endpoints.controller("B").unwrap().cxi.clone().unwrap();
    let response = http
        .get(format!("{cxi_b}/cxi/v1/abstract-topology"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The events of `domain`'s manager.
pub(crate) async fn manager_events(bed: &Bed, domain: &str) -> Vec<Value> {
    let manager = bed.endpoints.manager(domain).expect("a manager");
    let response = bed
        .anonymous_https()
        .get(format!("{}/api/v1/events", manager.rest))
        .bearer_auth(&manager.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn wait_manager_event(bed: &Bed, domain: &str, kind_wanted: &str) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(e) = manager_events(bed, domain)
                .await
                .into_iter()
                .find(|e| e["kind"] == kind_wanted)
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(e) => e,
        Err(_) => panic!(
            "manager-{domain}: no {kind_wanted}; events: {:#?}",
            manager_events(bed, domain).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_failure_goes_through_both_managers_to_both_controllers() {
    let bed = Bed::up(TOPOLOGY);
    wait_both_paths(&bed, 64).await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    let iw = origin_session(&bed).await["interworking"].clone();
    let (qx, gateway) = (
        iw["qx_link"].as_str().unwrap().to_owned(),
        iw["peer_gateway"].as_str().unwrap().to_owned(),
    );
    // the gateway KM of B on the route crashes: the next relay fails at the Qx hop
    bed.cli(&["node", "stop", &gateway, "--kill"]);
    let skip_a = events(&bed, "A").await.len();
    let failed = bed
        .client("sae-a1-1")
        .enc_keys("sae-b1-1", &request(1))
        .await;
    assert!(failed.is_err(), "the relay cannot cross a dead GWN");

    // procedure 3: KMLM-A -> XLMO-A -> (Mxi) -> XLMO-B; both XLMOs give their QCLM a
    // diagnosis and the QCLMs have their controllers decide
    let reported = wait_manager_event(&bed, "A", "kmlm-relay-failure").await;
    let relay_id = reported["relay_id"].clone();
    assert!(!relay_id.is_null());
    wait_manager_event(&bed, "A", "xlmo-fault-sent").await;
    let received = wait_manager_event(&bed, "B", "xlmo-fault-received").await;
    assert_eq!(received["relay_id"], relay_id, "the same failure at B");
    wait_manager_event(&bed, "A", "qclm-decision").await;
    wait_manager_event(&bed, "B", "qclm-decision").await;
    wait_event(&bed, "A", skip_a, "QCLM diagnosis", |e| {
        kind(e, "qclm-diagnosis")
    })
    .await;
    wait_event(&bed, "B", 0, "QCLM diagnosis", |e| {
        kind(e, "qclm-diagnosis")
    })
    .await;
    // controller A's decision: the route is agreed again with B, away from the dead GWN
    let reroute = wait_event(&bed, "A", skip_a, "reroute", |e| kind(e, "reroute")).await;
    let transaction = reroute["transaction"].as_str().unwrap().to_owned();
    wait_event(&bed, "B", 0, "commit", |e| {
        kind(e, "interworking-commit") && e["transaction"] == transaction.as_str()
    })
    .await;
    let session = origin_session(&bed).await;
    assert_eq!(session["interworking"]["qx_link"], other_qx(&qx));
    let path: Vec<String> = serde_json::from_value(session["path"].clone()).unwrap();
    bed.wait_path(&path.iter().map(String::as_str).collect::<Vec<_>>(), 16)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    // performance and security reports travel over Mxi as well
    wait_manager_event(&bed, "B", "xlmo-reports-received").await;
}

/// A NETCONF subscription to `domain`'s controller notifications.
async fn controller_notifications(
    bed: &Bed,
    domain: &str,
) -> (
    std::sync::Arc<qkdni::netconf::client::NetconfClient>,
    tokio::sync::broadcast::Receiver<String>,
) {
    let session = bed
        .controller_netconf(domain, bed.endpoints.netconf_logins(domain).1)
        .await;
    let receiver = session.subscribe().await.unwrap();
    (session, receiver)
}

/// The `up` of Qx link `qx` in domain `peer`'s abstract topology as a controller's NETCONF
/// reply shows it.
fn peer_qx_up(reply: &str, peer: &str, qx: &str) -> Option<bool> {
    let doc = roxmltree::Document::parse(reply).ok()?;
    let child = |n: roxmltree::Node<'_, '_>, name: &str| {
        n.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    let peer = doc
        .descendants()
        .find(|n| n.tag_name().name() == "peer" && child(*n, "domain").as_deref() == Some(peer))?;
    let link = peer
        .descendants()
        .find(|n| n.tag_name().name() == "qx-link" && child(*n, "id").as_deref() == Some(qx))?;
    child(link, "up").map(|up| up == "true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_controller_models_the_peer_domain_in_yang_and_follows_its_qx_links() {
    let bed = Bed::up(TOPOLOGY);
    let (b, mut notifications) = controller_notifications(&bed, "B").await;
    let filter =
        "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><interworking/></controller>";
    // A pushes its abstract topology: B's operators read it in B's YANG model
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let reply = b.get(Some(filter)).await.unwrap();
            if peer_qx_up(&reply, "A", "qx1") == Some(true)
                && peer_qx_up(&reply, "A", "qx2") == Some(true)
            {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("B shows A's abstract topology");
    for leaf in [
        "<node>ga1</node>",
        "<node>ga2</node>",
        "<id>sae-a1-1</id>",
        "<last-contact>",
    ] {
        assert!(ready.contains(leaf), "{leaf} in {ready}");
    }
    // never an internal link of A, anywhere in B's data
    let everything = b.get(None).await.unwrap();
    for internal in [
        "a1-a2", "a1-a3", "a2-ga1", "a2-a4", "a3-a4", "a4-ga1", "a3-ga2",
    ] {
        assert!(
            !everything.contains(internal),
            "B knows A's link {internal}"
        );
    }
    // a Qx link goes down: B's model follows within moments, and B's operators are told
    bed.cli(&["link", "down", "qx1"]);
    let cut = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        while peer_qx_up(&b.get(Some(filter)).await.unwrap(), "A", "qx1") != Some(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B sees qx1 down in A's abstract topology");
    let followed = cut.elapsed();
    println!("B's model shows A's qx1 down {followed:?} after the cut");
    assert!(followed < Duration::from_secs(2), "{followed:?}");
    let told = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = notifications.recv().await.unwrap();
            if n.contains("peer-topology-change") && n.contains("qx1 down") {
                return n;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "no peer-topology-change notification");
    // the exposure policy changes at run time; a peer whose domain's CA the controller does
    // not trust is refused whole
    let admin = bed
        .controller_netconf("B", bed.endpoints.netconf_logins("B").0)
        .await;
    let edit = "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><interworking><expose><key-rate>false</key-rate></expose></interworking></controller>";
    admin.edit_config("running", edit).await.unwrap();
    let stranger = "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><interworking><peer><domain>Z</domain><url>https://127.0.0.1:1</url><controller>controller-Z</controller></peer></interworking></controller>";
    match admin.edit_config("running", stranger).await {
        Err(qkdni::netconf::client::ClientError::Rpc(errors)) => {
            assert_eq!(errors[0].tag, qkdni::netconf::ErrorTag::InvalidValue)
        }
        other => panic!("a peer of an untrusted domain was accepted: {other:?}"),
    }
}
