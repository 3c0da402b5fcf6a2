//! Control-layer figures and controller refusals in the managers' report packs (issue 14,
//! part 4) over real processes: after a cross-domain run and a refused Cxi request at A's
//! controller, B's manager holds, in the report pack A's manager sent it over Mxi, A's
//! route install and Cxi round-trip figures and A's controller refusal with its source; a
//! distributed domain (no controller) packs no figures, and its peer still gets its packs.

use std::time::Duration;

use serde_json::Value;

use super::common::{eventually, Bed};

/// The last report packs `domain`'s manager sent and received (its REST API).
async fn latest_reports(bed: &Bed, domain: &str) -> Value {
    let manager = bed.endpoints.manager(domain).expect("a manager");
    let response = bed
        .anonymous_https()
        .get(format!("{}/api/v1/reports/latest", manager.rest))
        .bearer_auth(&manager.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The first pack `domain`'s manager received that satisfies `ok`, within 30 s (packs
/// come every 5 s).
async fn received_pack(bed: &Bed, domain: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(
        &format!("manager-{domain}: a received pack with {what}"),
        Duration::from_millis(200),
        || async {
            let latest = latest_reports(bed, domain).await;
            if ok(&latest["received"]) {
                Ok(latest["received"].clone())
            } else {
                Err(latest)
            }
        },
    )
    .await
}

/// Whether `refusals` (a `RefusalReport`) holds a Cxi `not-a-peer` refusal from 127.0.0.1
/// by `identity`.
fn has_cxi_refusal(refusals: &Value, identity: &str) -> bool {
    let counted = refusals["counts"].as_array().is_some_and(|counts| {
        counts.iter().any(|c| {
            c["point"] == "cxi" && c["reason"] == "not-a-peer" && c["count"].as_u64() >= Some(1)
        })
    });
    let recent = refusals["recent"].as_array().is_some_and(|recent| {
        recent.iter().any(|r| {
            r["point"] == "cxi"
                && r["reason"] == "not-a-peer"
                && r["source"] == "127.0.0.1"
                && r["identity"] == identity
        })
    });
    counted && recent
}

fn installs(control_layer: &Value) -> u64 {
    control_layer["route_installs"]["count"]
        .as_u64()
        .unwrap_or(0)
}

/// The Cxi round trips to `peer` in `control_layer`.
fn round_trips<'a>(control_layer: &'a Value, peer: &str) -> Option<&'a Value> {
    control_layer["cxi_round_trips"]
        .as_array()?
        .iter()
        .find(|p| p["domain"] == peer)
        .map(|p| &p["round_trips"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_manager_gets_control_layer_figures_and_controller_refusals() {
    let bed = Bed::up("two-domain-gwn.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 16)
        .await;
    // a cross-domain run: controller A agrees a route with B over Cxi and installs it
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    // a Cxi request from a party that is not the peer controller: refused at A
    let cxi_a = bed.endpoints.controller("A").unwrap().cxi.clone().unwrap();
    let response = bed
        .http("sae-a1-1")
        .get(format!("{cxi_a}/cxi/v1/abstract-topology"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // A's controller serves both to its manager
    let report = bed.controller_get("A", "/api/v1/reports").await;
    let control = &report["control_layer"];
    assert!(installs(control) > 0, "{report:#}");
    let summary = &control["route_installs"];
    for figure in ["mean_ms", "p50_ms", "p95_ms", "max_ms"] {
        assert!(summary[figure].as_f64().is_some(), "{figure}: {summary}");
    }
    assert!(summary["p50_ms"].as_f64() <= summary["max_ms"].as_f64());
    let to_b = round_trips(control, "B").expect("Cxi round trips to B");
    assert!(to_b["count"].as_u64() > Some(0), "{report:#}");
    assert!(to_b["p95_ms"].as_f64().is_some(), "{report:#}");
    assert!(
        has_cxi_refusal(&report["refusals"], "sae-a1-1"),
        "{report:#}"
    );

    // B's manager receives them from A's manager over Mxi, in the next report pack
    let pack = received_pack(&bed, "B", "A's figures and Cxi refusal", |pack| {
        pack["domain"] == "A"
            && installs(&pack["performance"]["control_layer"]) > 0
            && has_cxi_refusal(&pack["security"]["controller_refusals"], "sae-a1-1")
    })
    .await;
    let control = &pack["performance"]["control_layer"];
    let to_b = round_trips(control, "B").expect("A's Cxi round trips to B in the pack");
    assert!(to_b["count"].as_u64() > Some(0), "{pack:#}");
    assert!(to_b["mean_ms"].as_f64().is_some(), "{pack:#}");
    // and A's manager packed the same for B
    let sent = latest_reports(&bed, "A").await["sent"].clone();
    assert!(
        installs(&sent["performance"]["control_layer"]) > 0,
        "{sent:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_domain_packs_no_control_layer_figures() {
    // A: distributed control (its manager talks to the speaker KM); B: a controller
    let bed = Bed::up("gwn-distributed-centralized.toml");
    let from_a = received_pack(&bed, "B", "a pack of A", |pack| pack["domain"] == "A").await;
    assert!(
        from_a["performance"].get("control_layer").is_none(),
        "{from_a:#}"
    );
    assert!(
        from_a["security"].get("controller_refusals").is_none(),
        "{from_a:#}"
    );
    // the quantum layer is reported as before
    assert!(!from_a["performance"]["quantum"]["links"]
        .as_array()
        .unwrap()
        .is_empty());
    // B's controller is read: its figures, and the speaker of A as its Cxi peer
    let from_b = received_pack(&bed, "A", "B's figures", |pack| {
        pack["domain"] == "B" && pack["performance"]["control_layer"].is_object()
    })
    .await;
    assert!(
        round_trips(&from_b["performance"]["control_layer"], "A").is_some(),
        "{from_b:#}"
    );
    assert!(
        from_b["security"]["controller_refusals"].is_object(),
        "{from_b:#}"
    );
}
