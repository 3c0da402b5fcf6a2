//! Interworking with distributed-control QKDNs (Y.3818 clause 8): a domain without a
//! controller, whose nodes route by link state and whose gateway node ga1 speaks Cxi for it.

use super::{events, kind, wait_both_paths};
use crate::common::Bed;

/// The sessions B's controller holds as segments or origins of interworking sessions.
async fn b_sessions(bed: &Bed, role: &str) -> Vec<serde_json::Value> {
    bed.controller_get("B", "/api/v1/sessions")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["interworking"]["role"] == role)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_domain_interworks_with_a_centralized_one() {
    let bed = Bed::up("gwn-distributed-centralized.toml");
    wait_both_paths(&bed, 64).await;
    // a1 knows sae-b1-1 from nobody: it asks A's speaker (ga1, found in its link state),
    // which agrees the crossing with B's controller over Cxi and places it on a gateway
    // node; every node of A then routes toward it by itself
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let segments = b_sessions(&bed, "segment").await;
    assert_eq!(segments.len(), 1, "{segments:?}");
    let qx = segments[0]["interworking"]["qx_link"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_events = events(&bed, "B").await;
    assert!(b_events.iter().any(|e| kind(e, "interworking-commit")));

    // the other way: B's controller agrees a route with A's speaker
    bed.deliver("sae-b1-1", "sae-a1-1", 4).await;
    assert_eq!(b_sessions(&bed, "origin").await.len(), 1);

    // the Qx link in use goes down: A's speaker moves the crossing to the other Qx link,
    // B agreeing (a new transaction committed at B), and keys flow again
    let skip = events(&bed, "B").await.len();
    bed.cli(&["link", "down", &qx]);
    super::wait_event(&bed, "B", skip, "a commit on the other Qx link", |e| {
        kind(e, "interworking-commit")
            && e["detail"]
                .as_str()
                .is_some_and(|d| !d.contains(&format!("[{qx}]")) && !d.contains(&format!(" {qx} ")))
    })
    .await;
    let segment = b_sessions(&bed, "segment").await;
    assert!(
        segment
            .iter()
            .all(|s| s["interworking"]["qx_link"] != qx.as_str()),
        "{segment:?}"
    );
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
}
