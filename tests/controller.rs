//! Integration tests of the QKDN controller over real processes: the controller, five KM
//! agents, NETCONF southbound, ETSI 014 key delivery over controller-installed routes,
//! rerouting, crashes and restarts, the REST API and the live dashboard in a browser.

#[path = "accounting/mod.rs"]
mod accounting;
mod common;
#[path = "concurrency/mod.rs"]
mod concurrency;
#[path = "control_figures/mod.rs"]
mod control_figures;
#[path = "dashboard/mod.rs"]
mod dashboard;
#[path = "interworking/mod.rs"]
mod interworking;
#[path = "iwn/mod.rs"]
mod iwn;
#[path = "metrics/mod.rs"]
mod metrics;
#[path = "nonrepudiation/mod.rs"]
mod nonrepudiation;
#[path = "pq_tls/mod.rs"]
mod pq_tls;
#[path = "qos_admission/mod.rs"]
mod qos_admission;
#[path = "refusals/mod.rs"]
mod refusals;
#[path = "southbound/mod.rs"]
mod southbound;
#[path = "supply/mod.rs"]
mod supply;

use std::time::Duration;

use common::Bed;
use qkdni::etsi014::KeyRequest;
use serde_json::{json, Value};

const TOPOLOGY: &str = "single-domain.toml";

fn request(number: u32) -> KeyRequest {
    KeyRequest {
        number: Some(number),
        size: Some(256),
        ..Default::default()
    }
}

async fn get(bed: &Bed, path: &str) -> Value {
    bed.controller_get("A", path).await
}

/// Keys from sae-a1-1 to sae-a5-1, identical at both ends.
async fn deliver(bed: &Bed, number: u32) {
    bed.deliver("sae-a1-1", "sae-a5-1", number).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_flow_over_controller_routes_and_survive_a_link_fault() {
    let bed = Bed::up(TOPOLOGY);
    let session = bed.create_session("sae-a1-1", "sae-a5-1").await;
    assert_eq!(session["path"], json!(["a1", "a2", "a4", "a5"]));
    let id = session["id"].as_str().unwrap().to_owned();
    // routes are on the KMs themselves, not only in the controller
    let routes = get(&bed, "/api/v1/routes").await;
    assert_eq!(routes["a1"]["a5"], "a2");
    assert_eq!(routes["a2"]["a5"], "a4");
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    deliver(&bed, 8).await;

    // the cross link on the route goes down: the controller reroutes over a3
    bed.cli(&["link", "down", "a2-a4"]);
    let rerouted = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let s = get(&bed, &format!("/api/v1/sessions/{id}")).await;
            if s["path"] == json!(["a1", "a2", "a3", "a4", "a5"]) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no reroute within 15 s");
    assert!(rerouted["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["what"].as_str().unwrap().contains("rerouted")));
    let events = get(&bed, "/api/v1/events").await;
    let reroute = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "reroute")
        .expect("a reroute event");
    assert!(reroute["duration_ms"].as_f64().unwrap() > 0.0);
    let routes = get(&bed, "/api/v1/routes").await;
    assert_eq!(routes["a2"]["a5"], "a3");
    assert_eq!(routes["a3"]["a5"], "a4");
    // keys keep flowing over the new route
    bed.wait_path(&["a1", "a2", "a3", "a4", "a5"], 64).await;
    deliver(&bed, 8).await;

    // deleting the session removes its routes from the KMs
    let (http, rest, token) = bed.controller("A");
    let response = http
        .delete(format!("{rest}/api/v1/sessions/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = http
        .get(format!("{rest}/api/v1/sessions/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let routes = get(&bed, "/api/v1/routes").await;
    assert!(routes["a1"].as_object().unwrap().is_empty(), "{routes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_km_killed_during_an_install_leaves_nothing_half_installed() {
    let bed = Bed::up(TOPOLOGY);
    // a4 is on the only route to a5: it dies, the install cannot complete anywhere
    bed.cli(&["node", "stop", "a4", "--kill"]);
    let (http, rest, token) = bed.controller("A");
    let response = http
        .post(format!("{rest}/api/v1/sessions"))
        .bearer_auth(&token)
        .json(&json!({"master_sae": "sae-a1-1", "slave_sae": "sae-a5-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "{:?}", response.text().await);
    // no KM holds a route to a5
    for node in ["a1", "a2", "a3"] {
        let nc = bed.netconf(node).await;
        let config = nc.get_config("running", None).await.unwrap();
        assert!(
            !config.contains("<destination>a5</destination>"),
            "{node} holds half a route: {config}"
        );
    }
    assert!(get(&bed, "/api/v1/sessions")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    // the KM comes back: the same request now succeeds end to end
    bed.cli(&["node", "start", "a4"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let session = bed.create_session("sae-a1-1", "sae-a5-1").await;
    assert_eq!(session["state"], "active");
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    deliver(&bed, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_sessions_and_routes() {
    let bed = Bed::up(TOPOLOGY);
    let first = bed.create_session("sae-a1-1", "sae-a5-1").await;
    let second = bed.create_session("sae-a3-1", "sae-a1-2").await;
    let sessions_before = get(&bed, "/api/v1/sessions").await;
    let routes_before = get(&bed, "/api/v1/routes").await;
    bed.cli(&["node", "stop", "controller-A", "--kill"]);
    bed.cli(&["node", "start", "controller-A"]);
    let sessions_after = get(&bed, "/api/v1/sessions").await;
    assert_eq!(sessions_after, sessions_before);
    assert_eq!(get(&bed, "/api/v1/routes").await, routes_before);
    assert_eq!(sessions_after[0]["id"], first["id"]);
    assert_eq!(sessions_after[1]["id"], second["id"]);
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    deliver(&bed, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_authenticates_documents_itself_and_reports_problems() {
    let bed = Bed::up(TOPOLOGY);
    let (http, rest, token) = bed.controller("A");
    // OpenAPI document, without credentials
    let doc: Value = http
        .get(format!("{rest}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/topology",
        "/api/v1/links",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}",
        "/api/v1/routes",
        "/api/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    // no token or a wrong one, and no accepted client certificate: 401 problem
    let anonymous = bed.anonymous_https();
    for auth in [None, Some("wrong")] {
        let mut req = anonymous.get(format!("{rest}/api/v1/topology"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401);
    }
    // the operator's client certificate is accepted without a token
    assert_eq!(
        http.get(format!("{rest}/api/v1/links"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let topology = get(&bed, "/api/v1/topology").await;
    assert_eq!(topology["links"].as_object().unwrap().len(), 5);
    assert_eq!(topology["saes"]["sae-a3-2"], "a3");
    // bad requests
    for (body, status) in [
        (
            json!({"master_sae": "sae-a1-1", "slave_sae": "nobody"}),
            422,
        ),
        (
            json!({"master_sae": "sae-a1-1", "slave_sae": "sae-a1-1"}),
            400,
        ),
        (json!({"master_sae": "sae-a1-1"}), 400),
        (
            json!({"master_sae": "sae-a1-1", "slave_sae": "sae-a2-1", "rate_bps": -1.0}),
            400,
        ),
    ] {
        let response = http
            .post(format!("{rest}/api/v1/sessions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = http
        .get(format!("{rest}/api/v1/sessions/not-an-id"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// schemathesis (property-based, schema-driven) finds nothing wrong in the REST API against
/// its own OpenAPI document: no 5xx, no undocumented status or content type, no response
/// off its schema, no endpoint answering without credentials.
#[test]
fn schemathesis_finds_no_failures_in_the_rest_api() {
    let Some(python) = common::interop_python("schemathesis") else {
        return;
    };
    let bin = std::path::Path::new(&python)
        .parent()
        .expect("QKDNI_PYTHON in a venv's bin directory")
        .to_path_buf();
    let mut path = vec![bin];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let bed = Bed::up(TOPOLOGY);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/schemathesis_run.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(bed.dir())
        .env("PATH", std::env::join_paths(path).unwrap())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "schemathesis failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_the_controller_over_netconf_and_from_a_terminal() {
    use qkdni::netconf::client::ClientError;
    let bed = Bed::up(TOPOLOGY);
    let login = &bed.endpoints.netconf_user;
    let nc = bed.controller_netconf("A", login).await;

    // a terminal user creates a session with `qkdni ctl`
    let out = common::qkdni(&[
        "ctl",
        "--endpoints",
        bed.dir(),
        "sessions",
        "create",
        "sae-a1-1",
        "sae-a5-1",
    ]);
    assert!(
        out.contains("sae-a1-1 -> sae-a5-1  active  a1 > a2 > a4 > a5"),
        "{out}"
    );
    let listed = common::qkdni(&["ctl", "--endpoints", bed.dir(), "sessions", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let routes = common::qkdni(&["ctl", "--endpoints", bed.dir(), "routes"]);
    assert!(routes.contains("a2: to a5 via a4"), "{routes}");

    // the controller's state in its YANG model
    let state = nc
        .get(Some(
            "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"/>",
        ))
        .await
        .unwrap();
    assert!(state.contains("<domain>A</domain>"), "{state}");
    assert!(state.contains("<slave-sae>sae-a5-1</slave-sae>"), "{state}");
    assert!(state.contains("<destination>a5</destination>"), "{state}");
    assert!(state.contains("<id>a2-a4</id>"), "{state}");

    // the policy is configuration: fewest hops, then the next session follows it
    let policy = |p: &str| {
        format!("<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><policy>{p}</policy></controller>")
    };
    nc.edit_config("running", &policy("fewest-hops"))
        .await
        .unwrap();
    let config = nc.get_config("running", None).await.unwrap();
    assert!(config.contains("<policy>fewest-hops</policy>"), "{config}");
    assert!(config.contains("<role>km</role>"), "{config}");
    // a node can be marked as the domain's gateway (GWN)
    nc.edit_config(
        "running",
        "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><agents><agent><node>a5</node><role>gateway</role></agent></agents></controller>",
    )
    .await
    .unwrap();
    match nc.edit_config("running", &policy("teleport")).await {
        Err(ClientError::Rpc(errors)) => {
            assert_eq!(errors[0].tag, qkdni::netconf::ErrorTag::InvalidValue)
        }
        other => panic!("unknown policy accepted: {other:?}"),
    }
    // agents are fixed while the controller runs
    let remove = "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\" xmlns:nc=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><agents><agent nc:operation=\"delete\"><node>a3</node></agent></agents></controller>";
    match nc.edit_config("running", remove).await {
        Err(ClientError::Rpc(errors)) => assert_eq!(
            errors[0].tag,
            qkdni::netconf::ErrorTag::OperationNotSupported
        ),
        other => panic!("agent removal accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_rerouted_when_a_link_rate_no_longer_meets_its_demand() {
    let bed = Bed::up(TOPOLOGY);
    let (http, rest, token) = bed.controller("A");
    // 120 kbit/s: the cross link a2-a4 (150 kbit/s) can carry it
    let response = http
        .post(format!("{rest}/api/v1/sessions"))
        .bearer_auth(&token)
        .json(&json!({"master_sae": "sae-a1-1", "slave_sae": "sae-a5-1", "rate_bps": 120000.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["path"], json!(["a1", "a2", "a4", "a5"]));
    let id = session["id"].as_str().unwrap().to_owned();
    // an operator lowers the cross link's rate to 100 kbit/s at both ends
    // (the controller locks running while it installs routes: an operator retries)
    for node in ["a2", "a4"] {
        let nc = bed.netconf(node).await;
        let mut attempts = 0;
        while let Err(error) = nc
            .edit_config(
                "running",
                &format!(
                    "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><qkd_links><qkd_link><qkdl_id>{}</qkdl_id><rate-bps xmlns=\"urn:qkdni:yang:qkdni-km\">100000</rate-bps></qkd_link></qkd_links></qkd_node>",
                    qkdni::etsi015::link_id("A", None, "a2-a4")
                ),
            )
            .await
        {
            attempts += 1;
            assert!(attempts < 100, "{error}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rerouted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = get(&bed, &format!("/api/v1/sessions/{id}")).await;
            if s["path"] == json!(["a1", "a2", "a3", "a4", "a5"]) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("no reroute within 20 s");
    assert_eq!(rerouted["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipath_session_splits_its_keys_over_several_paths() {
    let bed = Bed::up(TOPOLOGY);
    // the controller's policy is configuration: multipath
    bed.set_policy("multipath").await;
    // 300 kbit/s from a1 to a4: more than a2-a4 (150) or a2-a3-a4 (200) alone, less than both
    let session = bed
        .create_session_at("sae-a1-1", "sae-a4-1", 300000.0)
        .await;
    let paths = session["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 2, "{session}");
    let total: f64 = paths.iter().map(|p| p["share_bps"].as_f64().unwrap()).sum();
    assert!((total - 300000.0).abs() < 1.0, "{session}");
    // a2 holds two weighted next hops toward a4
    let topology = get(&bed, "/api/v1/topology").await;
    let hops = topology["nodes"]["a2"]["next_hops"]["a4"]
        .as_array()
        .unwrap();
    let via: std::collections::BTreeSet<&str> =
        hops.iter().map(|h| h["node"].as_str().unwrap()).collect();
    assert_eq!(via, ["a3", "a4"].into_iter().collect(), "{topology}");

    // keys of one request travel both paths, and arrive identical
    bed.wait_path(&["a1", "a2", "a4"], 256).await;
    bed.wait_path(&["a2", "a3", "a4"], 256).await;
    let bed = &bed;
    let used = |node: &'static str| async move {
        let state = bed.netconf(node).await.get(None).await.unwrap();
        let consumed = |link: &str| {
            let id = qkdni::etsi015::link_id("A", None, link);
            let at = state.find(&format!("<qkdl_id>{id}</qkdl_id>")).unwrap();
            let rest = &state[at..];
            let start = rest.find("<consumed-blocks>").unwrap() + "<consumed-blocks>".len();
            rest[start..start + rest[start..].find('<').unwrap()]
                .parse::<u64>()
                .unwrap()
        };
        (consumed("a2-a4"), consumed("a2-a3"))
    };
    let before = used("a2").await;
    let keys = bed
        .client("sae-a1-1")
        .enc_keys("sae-a4-1", &request(64))
        .await
        .unwrap();
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bed
        .client("sae-a4-1")
        .dec_keys("sae-a1-1", &ids)
        .await
        .unwrap();
    for (a, b) in keys.keys.iter().zip(&fetched.keys) {
        assert_eq!((&a.key_ID, &a.key), (&b.key_ID, &b.key));
    }
    let after = used("a2").await;
    assert!(
        after.0 > before.0,
        "no key went over a2-a4: {before:?} {after:?}"
    );
    assert!(
        after.1 > before.1,
        "no key went over a2-a3: {before:?} {after:?}"
    );
}
