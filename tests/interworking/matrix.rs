//! The configuration matrix (Y.3818 clause 8): the same workload on all six interworking
//! configurations: GWN or IWN, between two centralized QKDNs, a distributed and a centralized
//! one, two distributed ones. A distributed domain has no controller: its nodes route by link
//! state and one border node (ga2, gb2; iwn1-a, iwn2-b) speaks Cxi for it.
//!
//! Steps: (1) ETSI 014 round trips A -> B and B -> A; (2) a fault inside each domain,
//! routed around, keys flowing again; (3) a relay failure (B's border KM in use killed)
//! through both managers (KMLM -> XLMO -> Mxi -> XLMO, each QCLM asking its controller or
//! speaker), the crossing moved with both domains agreeing; (4) a fault at the border in use
//! (the Qx link; the link into the IWN on B's side), moved likewise; (5) the peer's control
//! plane away: a new route is refused and nothing is half-agreed; back, it is agreed.

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

/// One configuration: its topology and what the workload uses in it.
struct Shape {
    topology: &'static str,
    a: Control,
    b: Control,
    /// Two paths from a1 to b1, one over each border.
    paths: [&'static [&'static str]; 2],
    /// The speakers of A and B when distributed.
    speakers: [&'static str; 2],
    /// The link to cut to take the border of a session down, by its Qx or transfer link.
    border_fault: fn(&str) -> String,
    /// Another pair of SAEs (step 5) and their path.
    second: (&'static str, &'static str, &'static [&'static str]),
    /// B's KM at the border of a Qx or transfer link.
    b_border: fn(&str) -> &'static str,
}

const GWN_PATHS: [&[&str]; 2] = [
    &["a1", "a2", "ga1", "gb1", "b2", "b1"],
    &["a1", "a3", "ga2", "gb2", "b3", "b1"],
];
const IWN_PATHS: [&[&str]; 2] = [
    &["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"],
    &["a1", "a3", "a5", "iwn2-a", "iwn2-b", "b3", "b5", "b1"],
];

fn gwn(topology: &'static str, a: Control, b: Control) -> Shape {
    Shape {
        topology,
        a,
        b,
        paths: GWN_PATHS,
        speakers: ["ga2", "gb2"],
        border_fault: |qx| qx.to_owned(),
        second: ("sae-a4-1", "sae-b4-1", &["a4", "ga1", "gb1", "b2", "b4"]),
        b_border: |qx| if qx == "qx1" { "gb1" } else { "gb2" },
    }
}

fn iwn(topology: &'static str, a: Control, b: Control) -> Shape {
    Shape {
        topology,
        a,
        b,
        paths: IWN_PATHS,
        speakers: ["iwn1-a", "iwn2-b"],
        // the transfer link joins two processes of one trusted node: a link into the IWN
        // fails (not the one of a speaker's KM, which would cut its domain's Cxi off)
        border_fault: |transfer| match transfer {
            "iwn1-kxi1p" => "iwn1-b-b2".to_owned(),
            _ => "a5-iwn2-a".to_owned(),
        },
        second: (
            "sae-a5-1",
            "sae-b5-1",
            &["a5", "iwn2-a", "iwn2-b", "b3", "b5"],
        ),
        b_border: |transfer| {
            if transfer == "iwn1-kxi1p" {
                "iwn1-b"
            } else {
                "iwn2-b"
            }
        },
    }
}

/// A domain's interworking sessions of `role` (origin, segment): the controller's, or its
/// speaker's.
async fn sessions(bed: &Bed, shape: &Shape, domain: &str, role: &str) -> Vec<Value> {
    let control = if domain == "A" { shape.a } else { shape.b };
    let all = match control {
        Centralized => bed.controller_get(domain, "/api/v1/sessions").await,
        Distributed => {
            let speaker = shape.speakers[usize::from(domain != "A")];
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
async fn agreed_qx(bed: &Bed, shape: &Shape) -> (Option<String>, Option<String>) {
    let of = |s: &[Value]| {
        s.iter()
            .find(|s| s["master_sae"] == "sae-a1-1" && s["slave_sae"] == "sae-b1-1")
            .map(qx_of)
    };
    (
        of(&sessions(bed, shape, "A", "origin").await),
        of(&sessions(bed, shape, "B", "segment").await),
    )
}

/// Stops (or starts again) domain `domain`'s control plane: its controller, or its speaker.
fn control_plane(bed: &Bed, shape: &Shape, up: bool) {
    let process = match shape.b {
        Centralized => "controller-B".to_owned(),
        Distributed => shape.speakers[1].to_owned(),
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

async fn workload(shape: &Shape) {
    let topology = shape.topology;
    let bed = Bed::up(topology);
    for path in shape.paths {
        bed.wait_path(path, 64).await;
    }

    // (1) round trips both ways
    deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
    deliver_eventually(&bed, "sae-b1-1", "sae-a1-1").await;
    let (qa, qb) = agreed_qx(&bed, shape).await;
    assert!(qa.is_some() && qa == qb, "{topology}: A {qa:?}, B {qb:?}");

    // (2) a fault inside each domain on the way from a1 and to b1
    for link in ["a1-a2", "b2-b1"] {
        bed.cli(&["link", "down", link]);
        deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
        bed.cli(&["link", "up", link]);
    }
    wait_until("both sides on one border", || async {
        let (qa, qb) = agreed_qx(&bed, shape).await;
        qa.is_some() && qa == qb
    })
    .await;

    // (3) B's border KM in use crashes: the next relay fails at the border; the failure goes
    // KMLM-A -> XLMO-A -> (Mxi) -> XLMO-B, each QCLM asks its controller or speaker, and the
    // crossing moves to the other border with both sides agreeing
    let (before, _) = agreed_qx(&bed, shape).await;
    let before = before.unwrap();
    let b_border = (shape.b_border)(&before);
    assert!(
        shape.b == Centralized || b_border != shape.speakers[1],
        "{topology}: the workload would kill B's speaker"
    );
    bed.cli(&["node", "stop", b_border, "--kill"]);
    assert!(
        bed.client("sae-a1-1")
            .enc_keys("sae-b1-1", &request(1))
            .await
            .is_err(),
        "{topology}: a relay across the dead border KM {b_border} ({before})"
    );
    let reported = super::wait_manager_event(&bed, "A", "kmlm-relay-failure").await;
    super::wait_manager_event(&bed, "A", "xlmo-fault-sent").await;
    let received = super::wait_manager_event(&bed, "B", "xlmo-fault-received").await;
    assert_eq!(received["relay_id"], reported["relay_id"], "{topology}");
    for domain in ["A", "B"] {
        let decision = super::wait_manager_event(&bed, domain, "qclm-decision").await;
        assert!(
            decision["detail"]
                .as_str()
                .is_some_and(|d| d.contains("HTTP 202")),
            "{topology}: QCLM-{domain}: {decision}"
        );
    }
    wait_until("agreement away from the dead border KM", || async {
        let (qa, qb) = agreed_qx(&bed, shape).await;
        qa.as_ref().is_some_and(|q| q != &before) && qa == qb
    })
    .await;
    deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
    bed.cli(&["node", "start", b_border]);

    // (4) the border in use fails: both sides agree on the other one
    let (qx, _) = agreed_qx(&bed, shape).await;
    let qx = qx.unwrap();
    let cut = (shape.border_fault)(&qx);
    bed.cli(&["link", "down", &cut]);
    wait_until("agreement on the other border", || async {
        let (qa, qb) = agreed_qx(&bed, shape).await;
        qa.as_ref().is_some_and(|q| q != &qx) && qa == qb
    })
    .await;
    deliver_eventually(&bed, "sae-a1-1", "sae-b1-1").await;
    bed.cli(&["link", "up", &cut]);

    // (5) B's control plane away: a new session is refused, nothing half-agreed in A
    let (master, slave, path) = shape.second;
    bed.wait_path(path, 16).await;
    control_plane(&bed, shape, false);
    let refused = bed.client(master).enc_keys(slave, &request(1)).await;
    assert!(
        refused.is_err(),
        "{topology}: keys without B's control plane"
    );
    let half = sessions(&bed, shape, "A", "origin")
        .await
        .into_iter()
        .filter(|s| s["slave_sae"] == slave)
        .filter(|s| s["state"] != "unroutable" && s["state"] != "pending")
        .count();
    assert_eq!(half, 0, "{topology}: a route agreed with nobody");
    control_plane(&bed, shape, true);
    deliver_eventually(&bed, master, slave).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_runs_on_every_configuration() {
    for shape in [
        gwn("two-domain-gwn.toml", Centralized, Centralized),
        gwn("gwn-distributed-centralized.toml", Distributed, Centralized),
        gwn("gwn-distributed-distributed.toml", Distributed, Distributed),
        iwn("two-domain-iwn.toml", Centralized, Centralized),
        iwn("iwn-distributed-centralized.toml", Distributed, Centralized),
        iwn("iwn-distributed-distributed.toml", Distributed, Distributed),
    ] {
        // a developer may run one configuration: QKDNI_MATRIX=<part of its topology name>
        if std::env::var("QKDNI_MATRIX").is_ok_and(|only| !shape.topology.contains(&only)) {
            continue;
        }
        workload(&shape).await;
        eprintln!("{}: every step passed", shape.topology);
    }
}
