//! Refusal accounting (issue 14, part 4) over real processes: bad ETSI GS QKD 014 requests
//! (no client certificate, an SAE of another KME) and bad Cxi requests (not the peer
//! controller, malformed) are counted per reference point and reason with their sources,
//! and crossing a threshold raises an alarm: a KM's `security-event` notification, which
//! the manager records, and a controller event.

use std::time::Duration;

use serde_json::Value;

use super::common::{eventually, topology, Bed};
use crate::interworking::manager_events;

/// The two-domain testbed with a KM threshold of 3 ETSI 014 refusals per minute.
fn bed() -> Bed {
    let mut text = std::fs::read_to_string(topology("two-domain-gwn.toml")).unwrap();
    text.push_str("\n[refusals]\ndefault_threshold = 0\n[refusals.thresholds]\netsi014 = 3\n");
    Bed::up_text_controlled(&text)
}

/// The first event of `kind` that `events` yields within 30 s.
async fn wait_for<F, Fut>(what: &str, kind: &str, events: F) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Value>>,
{
    eventually(
        &format!("{what}: a {kind} event"),
        Duration::from_millis(100),
        || async {
            let events = events().await;
            match events.iter().find(|e| e["kind"] == kind) {
                Some(e) => Ok(e.clone()),
                None => Err(events),
            }
        },
    )
    .await
}

async fn scrape(bed: &Bed, url: &str) -> String {
    // plain HTTP (the client's TLS settings go unused)
    let response = bed.anonymous_https().get(url).send().await.unwrap();
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_counted_with_their_sources_and_raise_alarms() {
    let bed = bed();
    let kme = bed.kme("a1");
    // ETSI 014 without a client certificate: 401, twice
    let anonymous = bed.anonymous_https();
    for _ in 0..2 {
        let response = anonymous
            .get(format!("{kme}/api/v1/keys/sae-a4-1/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    // an SAE of another KME: 401, twice; the second is the fourth refusal within a
    // minute, above the threshold of 3
    let stranger = bed.http("sae-a4-1");
    for _ in 0..2 {
        let response = stranger
            .get(format!("{kme}/api/v1/keys/sae-a1-2/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    // a good request is no refusal
    let response = bed
        .http("sae-a1-1")
        .get(format!("{kme}/api/v1/keys/sae-a4-1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // the KM's counts (Prometheus and YANG state)
    let a1 = bed.endpoints.node("a1").unwrap();
    let text = scrape(&bed, a1.metrics.as_deref().unwrap()).await;
    assert!(
        text.contains("qkdni_km_refusals_total{point=\"etsi014\",reason=\"unauthorized\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("qkdni_km_refusal_alarms_total{point=\"etsi014\"} 1"),
        "{text}"
    );
    let state = bed.netconf("a1").await.get(None).await.unwrap();
    assert!(
        state.contains("<reference-point>etsi014</reference-point>")
            && state.contains("<reason>unauthorized</reason>")
            && state.contains("<count>4</count>"),
        "{state}"
    );
    // the alarm reached the manager (KM notification), with the source and identity of
    // the refusal that crossed the threshold
    let alarm = wait_for("manager-A", "refusal-alarm", || manager_events(&bed, "A")).await;
    let detail = alarm["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("a1: 4 refusals at etsi014")
            && detail.contains("127.0.0.1")
            && detail.contains("sae-a4-1"),
        "{alarm}"
    );

    // Cxi: a party that is not the peer controller, over and over (the controller's
    // default threshold is 60 per minute), then the peer with a malformed message
    let cxi_a = bed.endpoints.controller("A").unwrap().cxi.clone().unwrap();
    let operator = bed.http("sae-a1-1");
    for _ in 0..61 {
        let response = operator
            .get(format!("{cxi_a}/cxi/v1/abstract-topology"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    let files = |stem: &str| qkdni::tls::TlsFiles {
        cert: bed.dir.join("pki").join(format!("{stem}.crt")),
        key: bed.dir.join("pki").join(format!("{stem}.key")),
        ca: vec![bed.endpoints.ca_cert.clone()],
        peer_cas: Vec::new(),
    };
    let controller_b =
        qkdni::tls::https_client(&files("controller-B"), Duration::from_secs(10)).unwrap();
    let response = controller_b
        .post(format!("{cxi_a}/cxi/v1/status"))
        .json(&serde_json::json!({"version": 99, "domain": "B", "kind": "sessions"}))
        .send()
        .await
        .unwrap();
    // refused as unsigned (non-repudiation) or malformed
    assert!([400, 401].contains(&response.status().as_u16()));
    let controller = bed.endpoints.controller("A").unwrap();
    let text = scrape(&bed, controller.metrics.as_deref().unwrap()).await;
    assert!(
        text.contains("qkdni_controller_refusals_total{point=\"cxi\",reason=\"not-a-peer\"} 61"),
        "{text}"
    );
    // and the peer's bad message under a reason of its own
    let other_reasons = text
        .lines()
        .filter(|l| l.starts_with("qkdni_controller_refusals_total{point=\"cxi\""))
        .filter(|l| !l.contains("not-a-peer"))
        .count();
    assert_eq!(other_reasons, 1, "{text}");
    let alarm = wait_for("controller-A", "refusal-alarm", || async {
        bed.controller_get("A", "/api/v1/events")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    })
    .await;
    let detail = alarm["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("61 refusals at cxi")
            && detail.contains("127.0.0.1")
            && detail.contains("(sae-a1-1)")
            && detail.contains("not-a-peer"),
        "{alarm}"
    );
}
