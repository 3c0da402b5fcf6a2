//! Key transfer through an interworking node over real processes (Y.3818 9.2, procedure 1):
//! ETSI 014 keys from an SAE of QKDN A to one of QKDN B, relayed inside A to KM-A of the IWN,
//! transferred to KM-B over Kxi-1' (ETSI GS QKD 020 V1.1.1), relayed on inside B; the
//! transfer's life-cycle metadata at both controllers; short resources refused whole.

use serde_json::Value;

use crate::common::Bed;

const TOPOLOGY: &str = "two-domain-iwn.toml";

/// The controller's transfer records.
async fn transfers(bed: &Bed, domain: &str) -> Vec<Value> {
    bed.controller_get(domain, "/api/v1/transfers")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `domain`'s controller's records, together, name every key of `ids`.
async fn wait_record_all(bed: &Bed, domain: &str, ids: &[String]) {
    let all = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let records = transfers(bed, domain).await;
            let have: std::collections::HashSet<&str> = records
                .iter()
                .flat_map(|r| r["key_ids"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            if ids.iter().all(|id| have.contains(id.as_str())) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    all.unwrap_or_else(|_| panic!("{domain}: not every delivered key is recorded"));
}

/// Waits until `domain`'s controller holds a transfer record with every key of `ids`.
async fn wait_record(bed: &Bed, domain: &str, ids: &[String]) -> Value {
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let hit = transfers(bed, domain).await.into_iter().find(|r| {
                let have: Vec<&str> = r["key_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                ids.iter().all(|id| have.contains(&id.as_str()))
            });
            if let Some(record) = hit {
                return record;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{domain}: no transfer record of {ids:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cross_an_iwn_and_both_controllers_keep_the_same_life_cycle_record() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 64)
        .await;
    // same bytes and IDs at both ends (and again on a refetch)
    let ids = bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let sent = wait_record(&bed, "A", &ids).await;
    let received = wait_record(&bed, "B", &ids).await;
    assert_eq!(sent["relay_id"], received["relay_id"]);
    assert_eq!(
        (sent["role"].as_str(), received["role"].as_str()),
        (Some("sender"), Some("receiver"))
    );
    for record in [&sent, &received] {
        assert_eq!(record["state"], "transferred", "{record:#}");
        assert_eq!(record["link"], "iwn1-kxi1p");
        assert_eq!(record["master_sae"], "sae-a1-1");
        assert_eq!(record["slave_saes"], serde_json::json!(["sae-b1-1"]));
        assert_eq!(record["key_size"], 256);
        assert_eq!(record["key_ids"].as_array().unwrap().len(), ids.len());
    }
    assert_eq!(sent["node"], "iwn1-a");
    assert_eq!(received["node"], "iwn1-b");
    // the same record in controller B's YANG state
    let viewer = bed.endpoints.domains["B"]
        .netconf_readonly_user
        .clone()
        .expect("B's read-only NETCONF login");
    let netconf = bed.controller_netconf("B", &viewer).await;
    let state = netconf
        .get(Some(
            "<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><interworking><key-transfer/></interworking></controller>",
        ))
        .await
        .unwrap();
    let relay = received["relay_id"].as_str().unwrap();
    assert!(
        state.contains(&format!("<relay-id>{relay}</relay-id>")),
        "{state}"
    );
    for id in &ids {
        assert!(state.contains(&format!("<key-id>{id}</key-id>")), "{state}");
    }
    // KM-A and KM-B count the keys on their transfer link
    let count = |xml: &str, leaf: &str| -> u64 {
        let start = xml.find(&format!("<{leaf}>")).expect(leaf) + leaf.len() + 2;
        xml[start..].split('<').next().unwrap().parse().unwrap()
    };
    let filter = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><transfer-links/></key-manager></qkd_node>";
    let at_a = bed.netconf("iwn1-a").await.get(Some(filter)).await.unwrap();
    let at_b = bed.netconf("iwn1-b").await.get(Some(filter)).await.unwrap();
    assert!(count(&at_a, "keys-sent") >= ids.len() as u64, "{at_a}");
    assert!(count(&at_b, "keys-received") >= ids.len() as u64, "{at_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_key_on_the_route_are_refused_whole() {
    let bed = Bed::up(TOPOLOGY);
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 16)
        .await;
    // the largest requests (128 keys of 1024 bits: 512 blocks a hop) back to back drain the
    // route faster than its links refill it, until one is refused
    let request = qkdni::etsi014::KeyRequest {
        number: Some(128),
        size: Some(1024),
        ..Default::default()
    };
    let master = bed.client("sae-a1-1");
    let mut delivered: Vec<String> = Vec::new();
    let mut refused = None;
    for _ in 0..50 {
        match master.enc_keys("sae-b1-1", &request).await {
            Ok(keys) => delivered.extend(keys.keys.iter().map(|k| k.key_ID.clone())),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("a request beyond the key on the route");
    assert!(refused.to_string().contains("503"), "{refused}");
    // nothing half-transferred: the controllers record exactly the delivered keys, and the
    // slave's KM holds exactly those
    for domain in ["A", "B"] {
        if !delivered.is_empty() {
            wait_record_all(&bed, domain, &delivered).await;
        }
        let recorded: usize = transfers(&bed, domain)
            .await
            .iter()
            .filter(|r| r["state"] == "transferred")
            .map(|r| r["key_ids"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(recorded, delivered.len(), "{domain}");
    }
    let waiting = bed
        .netconf("b1")
        .await
        .get(Some(
            "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><etsi014><deliveries-waiting/></etsi014></key-manager></qkd_node>",
        ))
        .await
        .unwrap();
    assert!(
        waiting.contains(&format!(
            "<deliveries-waiting>{}</deliveries-waiting>",
            delivered.len()
        )),
        "{} delivered: {waiting}",
        delivered.len()
    );
    // and key supply goes on once the links refill
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 16)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
}
