//! The configuration matrix (Y.3818 clause 8): the same workload on every interworking
//! configuration the testbed has: GWN between two centralized QKDNs, a distributed and a
//! centralized one, two distributed ones. A distributed domain has no controller: its nodes
//! route by link state and its gateway node (ga1, gb1) speaks Cxi for it.
//!
//! Steps: (1) ETSI 014 round trips A -> B and B -> A; (2) a fault inside each domain,
//! routed around, keys flowing again; (3) a fault on the Qx link in use, the crossing moved
//! with both domains agreeing; (4) the peer's control plane away: a new route is refused and
//! nothing is half-agreed on either side; back, it is agreed.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::request;
use crate::common::Bed;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Control {
    Centralized,
    Distributed,
}

use Control::{Centralized, Distributed};

/// Keys from `master` to `slave`, waiting while the domains converge or agree (503), or
/// while a control plane that just came back does not know its domain yet (400 unknown SAE).
async fn deliver_eventually(bed: &Bed, master: &str, slave: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let keys = loop {
        match bed.client(master).enc_keys(slave, &request(2)).await {
            Ok(keys) => break keys,
            Err(qkdni::etsi014::ClientError::Kme { status, body })
                if Instant::now() < deadline
                    && (status == 503
                        || (status == 400 && body.message.contains("unknown SAE"))) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(other) => panic!("keys from {master} for {slave}: {other}"),
        }
    };
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bed.client(slave).dec_keys(master, &ids).await.unwrap();
    for (a, b) in keys.keys.iter().zip(&fetched.keys) {
        assert_eq!((&a.key_ID, &a.key), (&b.key_ID, &b.key));
    }
}

/// A domain's interworking sessions of `role` (origin, segment): the controller's, or its
/// speaker's.
async fn sessions(bed: &Bed, domain: &str, control: Control, role: &str) -> Vec<Value> {
    let all = match control {
        Centralized => bed.controller_get(domain, "/api/v1/sessions").await,
        Distributed => {
            let speaker = if domain == "A" { "ga1" } else { "gb1" };
            qkdni::testbed::runner::interworking_report(&bed.endpoints, speaker)
                .await
                .unwrap()["sessions"]
                .clone()
        }
    };
    all.as_array()
        .unwrap()
        .iter()
        .filter(|s| match control {
            Centralized => s["interworking"]["role"] == role,
            Distributed => s["role"] == role,
        })
        .cloned()
        .collect()
}

fn qx_of(session: &Value) -> String {
    session["interworking"]["qx_link"]
        .as_str()
        .or(session["entry"]["link"].as_str())
        .unwrap()
        .to_owned()
}

/// The Qx link each side holds for the session between sae-a1-1 and sae-b1-1 (A origin).
async fn agreed_qx(bed: &Bed, a: Control, b: Control) -> (Option<String>, Option<String>) {
    let of = |s: &[Value]| {
        s.iter()
            .find(|s| s["master_sae"] == "sae-a1-1" && s["slave_sae"] == "sae-b1-1")
            .map(qx_of)
    };
    (
        of(&sessions(bed, "A", a, "origin").await),
        of(&sessions(bed, "B", b, "segment").await),
    )
}

/// Stops (or starts again) domain `domain`'s control plane: its controller, or its speaker.
fn control_plane(bed: &Bed, domain: &str, control: Control, up: bool) {
    let process = match (control, domain) {
        (Centralized, d) => format!("controller-{d}"),
        (Distributed, "A") => "ga1".into(),
        (Distributed, _) => "gb1".into(),
    };
    match up {
        true => bed.cli(&["node", "start", &process]),
        false => bed.cli(&["node", "stop", &process, "--kill"]),
    };
}

async fn wait_until<F, Fut>(what: &str, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holds().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn workload(topology: &str, a: Control, b: Control) {
    let bed = Bed::up(topology);
    super::wait_both_paths(&bed, 64).await;

    // (1) round trips both ways
    deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
    deliver_eventually(&bed, "sae-b1-1", "sae-a1-1").await;
    let (qa, qb) = agreed_qx(&bed, a, b).await;
    assert!(qa.is_some() && qa == qb, "{topology}: A {qa:?}, B {qb:?}");

    // (2) a fault inside each domain on the way from a1 and to b1
    for link in ["a1-a2", "b2-b1"] {
        bed.cli(&["link", "down", link]);
        deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
        bed.cli(&["link", "up", link]);
    }
    wait_until("both sides on one Qx link", || async {
        let (qa, qb) = agreed_qx(&bed, a, b).await;
        qa.is_some() && qa == qb
    })
    .await;

    // (3) the Qx link in use goes down: both sides agree on the other one
    let (qx, _) = agreed_qx(&bed, a, b).await;
    let qx = qx.unwrap();
    bed.cli(&["link", "down", &qx]);
    wait_until("agreement on the other Qx link", || async {
        let (qa, qb) = agreed_qx(&bed, a, b).await;
        qa.as_ref().is_some_and(|q| q != &qx) && qa == qb
    })
    .await;
    deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
    bed.cli(&["link", "up", &qx]);

    // (4) B's control plane away: a new session is refused, nothing half-agreed in A
    bed.wait_path(&["a4", "ga1", "gb1", "b2", "b4"], 16).await;
    control_plane(&bed, "B", b, false);
    let refused = bed
        .client("sae-a4-1")
        .enc_keys("sae-b4-1", &request(1))
        .await;
    assert!(
        refused.is_err(),
        "{topology}: keys without B's control plane"
    );
    let half = sessions(&bed, "A", a, "origin")
        .await
        .into_iter()
        .filter(|s| s["slave_sae"] == "sae-b4-1")
        .filter(|s| s["state"] != "unroutable" && s["state"] != "pending")
        .count();
    assert_eq!(half, 0, "{topology}: a route agreed with nobody");
    control_plane(&bed, "B", b, true);
    deliver_eventually(&bed, "sae-a4-1", "sae-b4-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_runs_on_every_gwn_configuration() {
    workload("two-domain-gwn.toml", Centralized, Centralized).await;
    workload("gwn-distributed-centralized.toml", Distributed, Centralized).await;
    workload("gwn-distributed-distributed.toml", Distributed, Distributed).await;
}
