//! Fuzzes a KM's ETSI GS QKD 014 API end to end, without sockets: the KSA router (routing,
//! admission control, path and query extraction, body parsing, validation, the key store)
//! of a real agent whose SAEs are all local (keys are made on the spot, nothing is relayed),
//! called as an authenticated SAE. The first byte picks the method and endpoint and the
//! calling SAE, the input up to the first newline is the path segment and query, the rest
//! the body. Every answer must be 200 or an ETSI `Error` body with a 4xx/503 status, never a
//! panic or a 5xx other than 503.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use qkdni::km::agent::Agent;
use qkdni::km::config::KmConfig;
use qkdni::tls::{PeerIdentity, TlsFiles};
use tower::ServiceExt;

fn fixture() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // one fixed place, emptied at start (as the rpc target's host key): runs do not
        // pile up stores of keys nobody fetched
        let dir = std::env::temp_dir().join("qkdni-fuzz-etsi014");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = qkdni::pki::Authority::new("fuzz").unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let km = ca
            .issue_to(&dir, "km-f1", "f1", qkdni::pki::Role::Node)
            .unwrap();
        let saes: BTreeMap<String, String> = ["sae-1", "sae-2", "sae-3"]
            .iter()
            .map(|s| (s.to_string(), "f1".to_string()))
            .collect();
        let config = KmConfig {
            node: "f1".into(),
            domain: "F".into(),
            data_dir: dir.join("data"),
            etsi014_listen: "127.0.0.1:0".parse().unwrap(),
            kma_listen: "127.0.0.1:0".parse().unwrap(),
            tls: TlsFiles {
                cert: km.cert,
                key: km.key,
                ca: vec![dir.join("ca.crt")],
                peer_cas: Vec::new(),
            },
            operators: Vec::new(),
            etsi014: Default::default(),
            links: Vec::new(),
            saes,
            routes: BTreeMap::new(),
            netconf: None,
            controller: None,
            limits: Default::default(),
            metrics_listen: None,
            local_control: None,
            interworking: None,
            key_store: Default::default(),
            accounting: Default::default(),
            refusals: Default::default(),
            nonrepudiation: Default::default(),
            audit: Default::default(),
        };
        let router = runtime.block_on(async {
            let agent: Arc<Agent> = Agent::new(config).unwrap();
            qkdni::km::ksa::router(agent)
        });
        (runtime, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (runtime, router) = fixture();
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let endpoint = ["status", "enc_keys", "dec_keys", ""][usize::from(pick & 3)];
    let method = if pick & 4 == 0 {
        Method::GET
    } else {
        Method::POST
    };
    let caller = ["sae-1", "sae-2", "nobody"][usize::from(pick >> 3) % 3];
    let uri = format!("/api/v1/keys/{target}/{endpoint}");
    let Ok(mut request) = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    request
        .extensions_mut()
        .insert(PeerIdentity(Some(caller.to_owned())));
    let response = runtime.block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, bytes)
    });
    let (status, bytes) = response;
    assert!(
        status == 200 || (400..500).contains(&status) || status == 503,
        "HTTP {status}"
    );
    if status != 200 {
        let error: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON body");
        assert!(error["message"].is_string(), "{error}");
    }
});
