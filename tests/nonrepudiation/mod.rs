//! Non-repudiation of interworking messages over real processes: on the two-domain testbed,
//! Cxi messages signed with a wrong key are refused and change nothing; a real cross-domain
//! run leaves evidence at both controllers and both managers that `qkdni audit show` lists
//! and `qkdni audit verify` proves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use coset::cbor::value::Value as Cbor;
use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use qkdni::control::config::ControllerConfig;
use qkdni::nonrepudiation::{cose, http::HEADER, Signer};
use qkdni::pki::{Authority, Role};
use serde_json::Value;

use super::common::{Bed, QKDNI};

const TOPOLOGY: &str = "two-domain-gwn.toml";

fn b64(cose: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cose)
}

/// `qkdni audit <command> <dir>`: its success and output.
fn audit(command: &str, dir: &Path) -> (bool, String) {
    let output = Command::new(QKDNI)
        .args(["audit", command, dir.to_str().unwrap()])
        .output()
        .expect("run qkdni audit");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The interworking session of `domain` with role `role`.
async fn session(bed: &Bed, domain: &str, role: &str) -> Value {
    let sessions = bed.controller_get(domain, "/api/v1/sessions").await;
    sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interworking"]["role"] == role)
        .cloned()
        .unwrap_or_else(|| panic!("no {role} session in {domain}: {sessions:#}"))
}

/// A COSE_Sign1 naming `chain` (controller A's genuine certificate) for `line`, signed with
/// the private key in PEM file `key` (not that certificate's).
fn forged(chain: &[u8], key: &Path, line: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(key).unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .content_type(cose::CONTENT_TYPE.into())
        .value(
            iana::HeaderParameter::X5Chain as i64,
            Cbor::Bytes(chain.to_vec()),
        )
        .value(15, Cbor::Map(vec![(Cbor::from(6), Cbor::from(now))]))
        .text_value(cose::MSG_LABEL.into(), Cbor::Text(line.into()))
        .build();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    CoseSign1Builder::new()
        .protected(header)
        .create_detached_signature(b"", b"", |data| {
            pair.sign(&rng, data).unwrap().as_ref().to_vec()
        })
        .build()
        .to_tagged_vec()
        .unwrap()
}

/// Waits until the evidence of state directory `dir` holds a record of reference point
/// `point` with a peer.
async fn wait_evidence(dir: &Path, point: &str) {
    let file = dir.join("evidence").join("evidence.jsonl");
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains(&format!("\"point\":\"{point}\"")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "no {point} evidence in {}", file.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cxi_messages_are_refused_and_real_agreements_are_proven() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 16)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 16)
        .await;
    // a real cross-domain run: A and B agree a route over signed Cxi messages
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let origin = session(&bed, "A", "origin").await;
    let segment = session(&bed, "B", "segment").await;
    let transaction = origin["interworking"]["transaction"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(segment["interworking"]["transaction"], transaction.as_str());

    // the Cxi client of A's controller (its TLS identity), toward B's Cxi server
    let dir = PathBuf::from(bed.dir());
    let config_a =
        ControllerConfig::load(&dir.join("controllers").join("A").join("controller.toml")).unwrap();
    let http =
        qkdni::tls::https_client_to_peer(&config_a.tls, "B", Duration::from_secs(10)).unwrap();
    let cxi_b = bed
        .endpoints
        .controller("B")
        .unwrap()
        .cxi
        .clone()
        .expect("B's Cxi URL");
    let post = |path: &str, signature: Option<Vec<u8>>| {
        let mut request = http.post(format!("{cxi_b}{path}"));
        if let Some(cose) = signature {
            request = request.header(HEADER, b64(&cose));
        }
        request.send()
    };
    let abort_path = format!("/cxi/v1/transactions/{transaction}/abort");
    let abort_line = format!("POST {abort_path}");
    let stranger = uuid::Uuid::new_v4();
    let commit_path = format!("/cxi/v1/transactions/{stranger}/commit");
    let commit_line = format!("POST {commit_path}");

    // a CA B does not trust issues "controller-A"; its key signs
    let rogue_dir = dir.join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = Authority::new("A").unwrap();
    let (cert, key) = rogue.issue("controller-A", Role::Node).unwrap();
    std::fs::write(rogue_dir.join("rogue.crt"), cert).unwrap();
    std::fs::write(rogue_dir.join("rogue.key"), key).unwrap();
    let rogue_signer =
        Signer::load(&rogue_dir.join("rogue.crt"), &rogue_dir.join("rogue.key")).unwrap();
    let genuine = Signer::load(&config_a.tls.cert, &config_a.tls.key).unwrap();

    let refused: Vec<(&str, reqwest::Response)> = vec![
        ("unsigned abort", post(&abort_path, None).await.unwrap()),
        (
            "abort signed by another CA's certificate",
            post(
                &abort_path,
                Some(rogue_signer.sign(b"", &abort_line, None).unwrap()),
            )
            .await
            .unwrap(),
        ),
        (
            "abort naming A's certificate, signed with another key",
            post(
                &abort_path,
                Some(forged(
                    &genuine.chain()[0],
                    &rogue_dir.join("rogue.key"),
                    &abort_line,
                )),
            )
            .await
            .unwrap(),
        ),
        (
            "commit signed by another CA's certificate",
            post(
                &commit_path,
                Some(rogue_signer.sign(b"", &commit_line, None).unwrap()),
            )
            .await
            .unwrap(),
        ),
        (
            "genuine signature of another message",
            post(
                &abort_path,
                Some(genuine.sign(b"", &commit_line, None).unwrap()),
            )
            .await
            .unwrap(),
        ),
    ];
    for (what, response) in refused {
        assert_eq!(response.status(), 401, "{what}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.contains("signature")),
            "{what}: {problem}"
        );
    }
    // nothing changed: B's segment is the same, keys still cross
    let after = session(&bed, "B", "segment").await;
    assert_eq!(after["id"], segment["id"]);
    assert_eq!(after["interworking"]["transaction"], transaction.as_str());
    assert_eq!(after["state"], segment["state"]);
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;

    // A's genuine key is accepted (an abort of a transaction B does not know changes
    // nothing) and B's controller signs its answer
    let unknown_abort = format!("/cxi/v1/transactions/{stranger}/abort");
    let response = post(
        &unknown_abort,
        Some(
            genuine
                .sign(b"", &format!("POST {unknown_abort}"), None)
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key(HEADER));

    // evidence at both controllers and both managers, listed and proven by `qkdni audit`
    let controllers = [
        (dir.join("controllers/A/data"), "B", "controller-B@B"),
        (dir.join("controllers/B/data"), "A", "controller-A@A"),
    ];
    for (state, peer, signer) in &controllers {
        let (ok, shown) = audit("show", state);
        assert!(ok, "{shown}");
        let line = shown
            .lines()
            .find(|l| l.starts_with(&format!("cxi peer {peer} transaction {transaction}")))
            .unwrap_or_else(|| panic!("no agreement {transaction} in {shown}"));
        assert!(line.contains("prepare by controller-A"), "{line}");
        assert!(line.contains("vote=prepared by controller-B"), "{line}");
        assert!(
            line.contains("answer to commit (200) outcome=committed"),
            "{line}"
        );
        assert!(line.contains(signer), "{line}");
        let (ok, verified) = audit("verify", state);
        assert!(ok, "{verified}");
        assert!(
            verified.contains(&format!("ok cxi peer {peer} transaction {transaction}")),
            "{verified}"
        );
    }
    // B kept the forged messages nowhere: only what verified
    let mut out = Vec::new();
    assert_eq!(
        qkdni::nonrepudiation::verify_all(&controllers[1].0, &mut out).unwrap(),
        0
    );
    // Kxi-1: the GWN that received keys over the Qx link signed its acknowledgement; the
    // sending GWN kept it (the route crossed qx1 or qx2)
    let gateway = origin["interworking"]["local_gateway"].as_str().unwrap();
    let state = dir.join("nodes").join(gateway).join("data");
    wait_evidence(&state, "kxi").await;
    let (ok, verified) = audit("verify", &state);
    assert!(ok, "{verified}");
    assert!(verified.contains("ok kxi peer B relay "), "{verified}");
    let (_, shown) = audit("show", &state);
    assert!(shown.contains("ack ack_status=relayed by gb"), "{shown}");
    for (domain, peer) in [("A", "B"), ("B", "A")] {
        let state = dir.join("managers").join(domain);
        wait_evidence(&state, "mxi").await;
        let (ok, verified) = audit("verify", &state);
        assert!(ok, "{verified}");
        assert!(
            verified.contains(&format!("ok mxi peer {peer} report-pack")),
            "{verified}"
        );
    }
}
