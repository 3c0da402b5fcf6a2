//! Integration tests of the key management layer over real KM processes, real mutual TLS
//! and real on-disk stores: ETSI GS QKD 014 key supply, key relay, faults and crashes.

#[path = "at_rest/mod.rs"]
mod at_rest;
#[path = "audit/mod.rs"]
mod audit;
mod common;
#[path = "distributed/mod.rs"]
mod distributed;
#[path = "limits/mod.rs"]
mod limits;
#[path = "netns/mod.rs"]
mod netns;
#[path = "qos/mod.rs"]
mod qos;

use common::Bed;
use qkdni::etsi014::{ClientError, KeyRequest};
use serde_json::{json, Value};

const TOPOLOGY: &str = "single-domain.toml";

fn request(number: u32, size: u32) -> KeyRequest {
    KeyRequest {
        number: Some(number),
        size: Some(size),
        ..Default::default()
    }
}

fn ids(container: &qkdni::etsi014::KeyContainer) -> Vec<String> {
    container.keys.iter().map(|k| k.key_ID.clone()).collect()
}

fn assert_same_keys(a: &qkdni::etsi014::KeyContainer, b: &qkdni::etsi014::KeyContainer) {
    assert_eq!(a.keys.len(), b.keys.len());
    for (x, y) in a.keys.iter().zip(&b.keys) {
        assert_eq!(x.key_ID, y.key_ID);
        assert_eq!(x.key, y.key, "key material differs for {}", x.key_ID);
    }
}

fn kme_error(result: Result<qkdni::etsi014::KeyContainer, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Kme { status, body }) => (status, body.message),
        Err(other) => panic!("transport error instead of a KME error: {other}"),
        Ok(keys) => panic!("expected an error, got {} keys", keys.keys.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_kms_round_trip_in_both_forms() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2"], 64).await;
    let (alice, bob) = (bed.client("sae-a1-1"), bed.client("sae-a2-1"));

    let status = alice.status("sae-a2-1").await.unwrap();
    assert_eq!(status.source_KME_ID, "a1");
    assert_eq!(status.target_KME_ID, "a2");
    assert_eq!(status.master_SAE_ID, "sae-a1-1");
    assert_eq!(status.slave_SAE_ID, "sae-a2-1");
    assert_eq!(status.key_size, 256);
    assert!(status.stored_key_count > 0);
    // daemons log to files: plain text, no terminal colour escapes
    let log = bed.log("a1");
    assert!(log.contains("KM agent ready"), "{log}");
    assert!(!log.contains("\x1b["), "colour escapes in the KM log");

    // POST forms, with a non-default key size
    let keys = alice.enc_keys("sae-a2-1", &request(3, 512)).await.unwrap();
    assert_eq!(keys.keys.len(), 3);
    for key in &keys.keys {
        uuid::Uuid::parse_str(&key.key_ID).unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &key.key).unwrap();
        assert_eq!(bytes.len(), 64);
    }
    let fetched = bob.dec_keys("sae-a1-1", &ids(&keys)).await.unwrap();
    assert_same_keys(&keys, &fetched);

    // GET forms (defaults: one key of key_size bits)
    let http_a = bed.http("sae-a1-1");
    let got: Value = http_a
        .get(format!("{}/api/v1/keys/sae-a2-1/enc_keys", bed.kme("a1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["keys"].as_array().unwrap().len(), 1);
    let id = got["keys"][0]["key_ID"].as_str().unwrap();
    let http_b = bed.http("sae-a2-1");
    let fetched: Value = http_b
        .get(format!(
            "{}/api/v1/keys/sae-a1-1/dec_keys?key_ID={id}",
            bed.kme("a2")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["keys"][0]["key"], got["keys"][0]["key"]);
    // POST without a body: every parameter takes its default (one key of key_size bits)
    let empty = http_a
        .post(format!("{}/api/v1/keys/sae-a2-1/enc_keys", bed.kme("a1")))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
    let empty: Value = empty.json().await.unwrap();
    assert_eq!(empty["keys"].as_array().unwrap().len(), 1);
    let key = empty["keys"][0]["key"].as_str().unwrap();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).unwrap();
    assert_eq!(bytes.len(), 32);
    let two: Value = http_a
        .get(format!(
            "{}/api/v1/keys/sae-a2-1/enc_keys?number=2&size=128",
            bed.kme("a1")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(two["keys"].as_array().unwrap().len(), 2);

    // the slave can be the master too: keys the other way round
    let back = bob.enc_keys("sae-a1-1", &request(2, 256)).await.unwrap();
    let fetched = alice.dec_keys("sae-a2-1", &ids(&back)).await.unwrap();
    assert_same_keys(&back, &fetched);

    // the quantum channel: a sync or frame of an older session (delayed in the network) is
    // refused and cannot roll the receiver back; supply goes on
    let pki = bed.dir.join("pki");
    let a1 = qkdni::tls::https_client(
        &qkdni::tls::TlsFiles {
            cert: pki.join("km-a1.crt"),
            key: pki.join("km-a1.key"),
            ca: vec![bed.endpoints.ca_cert.clone()],
            peer_cas: Vec::new(),
        },
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let channel = format!(
        "{}/qchannel/v1/links/a1-a2",
        bed.endpoints.node("a2").unwrap().kma
    );
    let stale = a1
        .post(format!("{channel}/sync"))
        .json(&serde_json::json!({"next_seq": 0, "epoch": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let frame = a1
        .post(format!("{channel}/frames"))
        .json(&serde_json::json!({"first_seq": 0, "blocks": "", "commit_upto": 0, "epoch": 1, "tx_owned": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(frame.status(), 409);
    let again = alice.enc_keys("sae-a2-1", &request(2, 256)).await.unwrap();
    let fetched = bob.dec_keys("sae-a1-1", &ids(&again)).await.unwrap();
    assert_same_keys(&again, &fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cross_two_relay_hops_to_every_slave() {
    let bed = Bed::up(TOPOLOGY);
    // the controller routes a1 -> a5 over a1-a2-a4-a5: two intermediate KMs relay the keys
    let session = bed.create_session("sae-a1-1", "sae-a5-1").await;
    assert_eq!(session["path"], json!(["a1", "a2", "a4", "a5"]));
    bed.create_session("sae-a1-1", "sae-a3-2").await;
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    bed.wait_path(&["a1", "a2", "a3"], 64).await;
    let alice = bed.client("sae-a1-1");
    let keys = alice
        .enc_keys(
            "sae-a5-1",
            &KeyRequest {
                number: Some(5),
                size: Some(256),
                additional_slave_SAE_IDs: Some(vec!["sae-a3-2".into(), "sae-a1-2".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for slave in ["sae-a5-1", "sae-a3-2", "sae-a1-2"] {
        let fetched = bed
            .client(slave)
            .dec_keys("sae-a1-1", &ids(&keys))
            .await
            .unwrap();
        assert_same_keys(&keys, &fetched);
    }
    // every hop logged the relay under one relay span; no key material in any log
    for node in ["a2", "a4"] {
        assert!(
            bed.log(node).contains("keys forwarded"),
            "{node} did not forward"
        );
    }
    assert!(bed.log("a5").contains("keys delivered to destination KM"));
    for node in ["a1", "a2", "a3", "a4", "a5"] {
        let log = bed.log(node);
        for key in &keys.keys {
            assert!(!log.contains(&key.key), "key material in the log of {node}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_standard_errors_and_change_nothing() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2"], 64).await;
    let alice = bed.client("sae-a1-1");
    let keys = alice.enc_keys("sae-a2-1", &request(2, 256)).await.unwrap();

    // freeze the link so that its pool can only change by consumption
    bed.cli(&["link", "down", "a1-a2"]);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let before = bed.own_blocks("a1", "a1-a2").await;

    // too many keys, unsupported sizes, unknown mandatory extension, unknown slave -> 400
    let limits = alice.status("sae-a2-1").await.unwrap();
    let too_many = request(limits.max_key_per_request + 1, 256);
    assert_eq!(
        kme_error(alice.enc_keys("sae-a2-1", &too_many).await).0,
        400
    );
    assert_eq!(
        kme_error(alice.enc_keys("sae-a2-1", &request(1, 100 + 1)).await).0,
        400
    );
    assert_eq!(
        kme_error(
            alice
                .enc_keys("sae-a2-1", &request(1, limits.max_key_size + 8))
                .await
        )
        .0,
        400
    );
    assert_eq!(
        kme_error(alice.enc_keys("sae-a2-1", &request(0, 256)).await).0,
        400
    );
    let ext = KeyRequest {
        extension_mandatory: Some(vec![json!({"abc_route_type": "direct"})]),
        ..Default::default()
    };
    assert_eq!(kme_error(alice.enc_keys("sae-a2-1", &ext).await).0, 400);
    assert_eq!(
        kme_error(alice.enc_keys("sae-nobody", &request(1, 256)).await).0,
        400
    );

    // malformed JSON -> 400 with an ETSI error body
    let http = bed.http("sae-a1-1");
    for body in ["{not json", r#"{"number": "three"}"#, r#"{"numbr": 1}"#] {
        let response = http
            .post(format!("{}/api/v1/keys/sae-a2-1/enc_keys", bed.kme("a1")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["message"].is_string());
    }

    // no client certificate -> 401
    let anonymous = bed.anonymous_https();
    let response = anonymous
        .get(format!("{}/api/v1/keys/sae-a2-1/status", bed.kme("a1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.json::<Value>().await.unwrap()["message"].is_string());

    // an SAE at the wrong KME -> 401
    let wrong_kme = bed.http("sae-a2-1");
    let response = wrong_kme
        .post(format!("{}/api/v1/keys/sae-a2-2/enc_keys", bed.kme("a1")))
        .json(&json!({"number": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // another SAE at the slave's KME may not fetch the keys -> 401; unknown IDs -> 400
    let (status, _) = kme_error(
        bed.client("sae-a2-2")
            .dec_keys("sae-a1-1", &ids(&keys))
            .await,
    );
    assert_eq!(status, 401);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        kme_error(
            bed.client("sae-a2-1")
                .dec_keys("sae-a1-1", std::slice::from_ref(&unknown))
                .await
        )
        .0,
        400
    );
    // one bad ID among good ones: nothing is handed out
    let mut mixed = ids(&keys);
    mixed.push(unknown);
    assert_eq!(
        kme_error(bed.client("sae-a2-1").dec_keys("sae-a1-1", &mixed).await).0,
        400
    );
    assert_eq!(
        kme_error(
            bed.client("sae-a2-1")
                .dec_keys("sae-a1-1", &["not-a-uuid".into()])
                .await
        )
        .0,
        400
    );

    // nothing above consumed key material or keys
    assert_eq!(bed.own_blocks("a1", "a1-a2").await, before);
    let fetched = bed
        .client("sae-a2-1")
        .dec_keys("sae-a1-1", &ids(&keys))
        .await
        .unwrap();
    assert_same_keys(&keys, &fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_drains_the_pool_then_link_up_restores_supply() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2"], 64).await;
    let alice = bed.client("sae-a1-1");
    bed.cli(&["link", "down", "a1-a2"]);
    let mut served = 0usize;
    let error = loop {
        match alice.enc_keys("sae-a2-1", &request(128, 256)).await {
            Ok(keys) => served += keys.keys.len(),
            Err(ClientError::Kme { status, body }) => break (status, body),
            Err(other) => panic!("{other}"),
        }
        assert!(served < 100_000, "the pool of a down link never drained");
    };
    assert_eq!(error.0, 503);
    assert!(!error.1.message.is_empty());
    // smaller requests fail too once the pool is empty
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let rest = bed.own_blocks("a1", "a1-a2").await;
    if rest >= 2 {
        alice
            .enc_keys("sae-a2-1", &request((rest - 1) as u32, 256))
            .await
            .unwrap();
    }
    assert_eq!(
        kme_error(alice.enc_keys("sae-a2-1", &request(1, 256)).await).0,
        503
    );
    assert_eq!(alice.status("sae-a2-1").await.unwrap().stored_key_count, 0);

    // degraded: QBER above threshold, still no key
    bed.cli(&["link", "degrade", "a1-a2"]);
    let reports = qkdni::testbed::runner::link_reports(&bed.endpoints, "a1")
        .await
        .unwrap();
    let link = reports.iter().find(|l| l.id == "a1-a2").unwrap();
    assert_eq!(link.condition.rate_bps, 0.0);
    assert!(link.condition.qber.unwrap() > 0.11);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        kme_error(alice.enc_keys("sae-a2-1", &request(1, 256)).await).0,
        503
    );

    bed.cli(&["link", "up", "a1-a2"]);
    bed.wait_path(&["a1", "a2"], 8).await;
    let keys = alice.enc_keys("sae-a2-1", &request(4, 256)).await.unwrap();
    let fetched = bed
        .client("sae-a2-1")
        .dec_keys("sae-a1-1", &ids(&keys))
        .await
        .unwrap();
    assert_same_keys(&keys, &fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_kill_9_of_any_km_and_are_fetched_once() {
    let bed = Bed::up(TOPOLOGY);
    bed.create_session("sae-a1-1", "sae-a5-1").await;
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    let alice = bed.client("sae-a1-1");
    let keys = alice.enc_keys("sae-a5-1", &request(8, 256)).await.unwrap();

    // the slave's KM crashes between enc_keys and dec_keys
    bed.cli(&["node", "stop", "a5", "--kill"]);
    bed.cli(&["node", "start", "a5"]);
    let bob = bed.client("sae-a5-1");
    let fetched = bob.dec_keys("sae-a1-1", &ids(&keys)).await.unwrap();
    assert_same_keys(&keys, &fetched);
    // an answer lost to a crash or a broken connection costs no key: within the refetch
    // window the same slave gets the same keys again (and nobody else ever)
    bed.cli(&["node", "stop", "a5", "--kill"]);
    bed.cli(&["node", "start", "a5"]);
    let again = bob.dec_keys("sae-a1-1", &ids(&keys)).await.unwrap();
    assert_same_keys(&keys, &again);
    let (status, _) = kme_error(
        bed.client("sae-a5-2")
            .dec_keys("sae-a1-1", &ids(&keys))
            .await,
    );
    assert!(status == 400 || status == 401, "{status}");

    // a relaying KM and the master's KM crash too; the links resynchronise and the same
    // path delivers fresh keys, identical at both ends
    let more = alice.enc_keys("sae-a5-1", &request(4, 256)).await.unwrap();
    bed.cli(&["node", "stop", "a2", "--kill"]);
    bed.cli(&["node", "stop", "a1", "--kill"]);
    bed.cli(&["node", "start", "a2"]);
    bed.cli(&["node", "start", "a1"]);
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    let alice = bed.client("sae-a1-1");
    let fresh = alice.enc_keys("sae-a5-1", &request(16, 256)).await.unwrap();
    let fetched = bob.dec_keys("sae-a1-1", &ids(&fresh)).await.unwrap();
    assert_same_keys(&fresh, &fetched);
    let fetched = bob.dec_keys("sae-a1-1", &ids(&more)).await.unwrap();
    assert_same_keys(&more, &fetched);
    // no key was ever handed out twice
    let all: std::collections::HashSet<&String> = keys
        .keys
        .iter()
        .chain(&more.keys)
        .chain(&fresh.keys)
        .map(|k| &k.key)
        .collect();
    assert_eq!(all.len(), 28);
}

#[test]
fn third_party_etsi014_client_works_unchanged() {
    let Some(python) = common::interop_python("etsi-qkd-014-client") else {
        return;
    };
    let bed = Bed::up(TOPOLOGY);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bed.create_session("sae-a1-1", "sae-a5-1"));
    runtime.block_on(bed.wait_path(&["a1", "a2", "a4", "a5"], 64));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/etsi014_client.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(bed.dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["same_keys"], true);
    assert_eq!(result["keys"], 3);
    // the same request again within the refetch window: the same keys
    assert_eq!(result["second_fetch_status"], 200);
    assert_eq!(result["wrong_sae_status"], 401);
}

/// Every certificate the testbed issues (CA, KMs, controller, SAEs, operator) passes
/// `openssl verify -x509_strict`, and a Python client whose context checks X.509 strictly
/// (as Python 3.13's default context does) gets an ETSI 014 status over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_certificates_pass_strict_x509_verification() {
    if !common::tool("openssl", &["version"]) || !common::tool("python3", &["--version"]) {
        return;
    }
    let bed = Bed::up(TOPOLOGY);
    let pki = bed.dir.join("pki");
    let mut certs: Vec<_> = std::fs::read_dir(&pki)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    certs.sort();
    assert!(
        certs.len() >= 14,
        "CA, 5 KMs, controller, 10 SAEs, operator: {certs:?}"
    );
    for cert in &certs {
        let output = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(&bed.endpoints.ca_cert)
            .arg(cert)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}{}",
            cert.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    bed.create_session("sae-a1-1", "sae-a2-1").await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/strict_tls_status.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args([bed.dir(), "sae-a1-1", "sae-a2-1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(status["slave_SAE_ID"], "sae-a2-1");
}
