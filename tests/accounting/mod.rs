//! Accounting across two domains over real processes (two-domain GWN testbed, 2 s periods):
//! after an application of A takes keys and its peer in B fetches them, both managers
//! report the period reconciled and the KMs' records of A and B agree key for key; a
//! forged usage summary (posted with A's manager certificate) raises B's accounting alarm;
//! the CSV exports read back as the JSON ones. The same across an interworking node (IWN
//! testbed): its KM-A's transfers out and its KM-B's transfers in are the keys supplied.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::common::{topology, Bed};
use qkdni::km::accounting::rest::{ExportedRecord, ExportedUsage};
use qkdni::management::mxi::messages::{
    ReconciliationState, UsageDirection, UsageReply, UsageSummary,
};

/// The reconciliation states of `domain`'s manager.
async fn reconciliation(bed: &Bed, domain: &str) -> Vec<Value> {
    let states = bed
        .manager_get(domain, "/api/v1/accounting/reconciliation")
        .await;
    states.as_array().cloned().unwrap_or_default()
}

/// Waits until `domain`'s manager holds a period matching `wanted`; returns it.
async fn wait_period(
    bed: &Bed,
    domain: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Some(p) = reconciliation(bed, domain).await.into_iter().find(&wanted) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match found {
        Ok(p) => p,
        Err(_) => panic!(
            "{domain}: no {what}; states: {:#?}",
            reconciliation(bed, domain).await
        ),
    }
}

/// `GET /admin/v1/accounting{query}` of `node`'s KMA as the operator.
async fn km_accounting(bed: &Bed, node: &str, query: &str) -> reqwest::Response {
    let tls = bed.endpoints.operator_tls_at(node);
    let client = qkdni::tls::https_client(&tls, Duration::from_secs(10)).unwrap();
    let kma = &bed.endpoints.node(node).unwrap().kma;
    let response = client
        .get(format!("{kma}/admin/v1/accounting{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{node} {query}");
    response
}

/// The key IDs of `node`'s records of `kind`.
async fn key_ids(bed: &Bed, node: &str, kind: &str) -> BTreeSet<String> {
    bed.accounting_key_ids(node, kind)
        .await
        .into_iter()
        .collect()
}

/// The testbed `file` with 2 s accounting periods.
fn bed_with_periods(file: &str) -> Bed {
    let text = std::fs::read_to_string(topology(file)).unwrap()
        + "\n[km_accounting]\nperiod_seconds = 2\n";
    Bed::up_text_controlled(&text)
}

/// An application of A takes 4 keys for its peer in B, which fetches them; both managers
/// reconcile the period once it is closed in both domains, and the records of a1 and b1
/// agree key for key. Returns the key IDs and A's reconciled period.
async fn a_delivery_reconciles(bed: &Bed) -> (BTreeSet<String>, Value) {
    let ids: BTreeSet<String> = bed
        .deliver("sae-a1-1", "sae-b1-1", 4)
        .await
        .into_iter()
        .collect();
    let reconciled = |p: &Value| {
        p["state"] == "reconciled" && (p["outbound_keys"] == 4 || p["inbound_keys"] == 4)
    };
    let at_a = wait_period(bed, "A", "reconciled period", reconciled).await;
    let at_b = wait_period(bed, "B", "reconciled period", reconciled).await;
    assert_eq!(at_a["period_start_ms"], at_b["period_start_ms"]);
    assert_eq!(
        (&at_a["outbound_keys"], &at_b["inbound_keys"]),
        (&4.into(), &4.into())
    );
    // key for key: what a1 supplied is what b1 received and handed to its SAE
    assert_eq!(key_ids(bed, "a1", "supplied").await, ids);
    assert_eq!(key_ids(bed, "b1", "received").await, ids);
    assert_eq!(key_ids(bed, "b1", "delivered").await, ids);
    (ids, at_a)
}

/// The key IDs of the records of `kind` of all `nodes` together.
async fn key_ids_of(bed: &Bed, nodes: &[&str], kind: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for node in nodes {
        all.extend(key_ids(bed, node, kind).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_reconciles_across_an_interworking_node_key_for_key() {
    let bed = bed_with_periods("two-domain-iwn.toml");
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 64)
        .await;
    let (ids, _) = a_delivery_reconciles(&bed).await;
    // the interworking node's KM-A transferred them to its KM-B (Kxi-1'), each its share
    assert_eq!(
        key_ids_of(&bed, &["iwn1-a", "iwn2-a"], "transferred-out").await,
        ids
    );
    assert_eq!(
        key_ids_of(&bed, &["iwn1-b", "iwn2-b"], "transferred-in").await,
        ids
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_reconciles_key_for_key_and_a_forged_summary_raises_the_alarm() {
    let bed = bed_with_periods("two-domain-gwn.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 64)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 64)
        .await;
    let (ids, at_a) = a_delivery_reconciles(&bed).await;
    // the gateways relayed them across the Qx links (each its share)
    assert_eq!(key_ids_of(&bed, &["ga1", "ga2"], "relayed").await, ids);

    // the CSV exports read back as the JSON ones (KM records, the manager's usage)
    let json: Value = km_accounting(&bed, "b1", "?format=json")
        .await
        .json()
        .await
        .unwrap();
    let json: Vec<ExportedRecord> = serde_json::from_value(json["records"].clone()).unwrap();
    let csv = km_accounting(&bed, "b1", "?format=csv")
        .await
        .text()
        .await
        .unwrap();
    let rows: Vec<ExportedRecord> = csv::Reader::from_reader(csv.as_bytes())
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    assert!(!rows.is_empty());
    assert_eq!(rows, json);
    let json: Value = bed
        .manager_response("A", "/api/v1/accounting")
        .await
        .json()
        .await
        .unwrap();
    let json: Vec<ExportedUsage> = serde_json::from_value(json["usage"].clone()).unwrap();
    let response = bed
        .manager_response("A", "/api/v1/accounting?format=csv")
        .await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = response.text().await.unwrap();
    let rows: Vec<ExportedUsage> = csv::Reader::from_reader(csv.as_bytes())
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    // the periods may have moved on between the two reads: compare the reconciled one
    let start = at_a["period_start_ms"].as_u64().unwrap();
    let of = |rows: &[ExportedUsage]| -> Vec<ExportedUsage> {
        rows.iter()
            .filter(|r| r.period_start_ms == start)
            .cloned()
            .collect()
    };
    assert_eq!(of(&rows), of(&json));
    assert!(of(&rows).iter().any(|r| r.sae == "sae-a1-1"
        && r.peer_sae == "sae-b1-1"
        && r.keys == 4
        && r.peer_domain == "B"));

    // A's manager, as itself, posts a summary of that period claiming one key more
    let config =
        qkdni::management::config::ManagerConfig::load(&bed.endpoints.manager("A").unwrap().config)
            .unwrap();
    let mxi = qkdni::management::mxi::MxiClient::new(&config).unwrap();
    let entry = |direction| qkdni::management::mxi::messages::UsageEntry {
        direction,
        master_sae: "sae-a1-1".into(),
        slave_sae: "sae-b1-1".into(),
        keys: 5,
        bits: 5 * 256,
        key_id_digest: qkdni::km::accounting::summary::digest(&[]),
        pending: 0,
    };
    let forged = UsageSummary {
        version: 1,
        kind: qkdni::management::mxi::messages::UsageSummaryKind::UsageSummary,
        id: uuid::Uuid::new_v4(),
        time: "2026-01-01T00:00:00Z".into(),
        domain: "A".into(),
        period_start_ms: start,
        period_seconds: 2,
        entries: vec![entry(UsageDirection::Outbound)],
    };
    let reply: UsageReply = mxi.exchange(&forged).await.unwrap();
    assert_eq!(reply.state, ReconciliationState::Mismatch, "{reply:?}");
    assert!(
        reply.mismatches[0].contains("5 key(s) sent, 4 arrived"),
        "{reply:?}"
    );
    // B's alarm: a manager event and the period's state
    let events: Vec<Value> = bed
        .manager_response("B", "/api/v1/events")
        .await
        .json()
        .await
        .unwrap();
    let alarm = events
        .iter()
        .find(|e| e["kind"] == "accounting-mismatch")
        .unwrap_or_else(|| panic!("no accounting alarm: {events:#?}"));
    assert_eq!(alarm["message"], forged.id.to_string());
    wait_period(&bed, "B", "mismatch", |p| {
        p["period_start_ms"] == start && p["state"] == "mismatch"
    })
    .await;
    // a summary that is not one (bad digest) changes nothing and is refused
    let mut bad = forged.clone();
    bad.id = uuid::Uuid::new_v4();
    bad.entries = vec![qkdni::management::mxi::messages::UsageEntry {
        key_id_digest: "zz".into(),
        ..entry(UsageDirection::Inbound)
    }];
    let refused = mxi.exchange::<_, UsageReply>(&bad).await;
    assert!(
        matches!(
            refused,
            Err(qkdni::management::mxi::SendError::Refused { status: 400, .. })
        ),
        "{refused:?}"
    );
}
