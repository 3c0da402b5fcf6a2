//! A QKDN with distributed control: no controller; every node's KM runs its local
//! controller, floods link state to its neighbours and relays over the routes it computed.

use crate::common::Bed;
use qkdni::etsi014::KeyRequest;

const TOPOLOGY: &str = "distributed-single.toml";

fn request(number: u32) -> KeyRequest {
    KeyRequest {
        number: Some(number),
        size: Some(256),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cross_the_domain_over_routes_the_nodes_computed() {
    let bed = Bed::up(TOPOLOGY);
    // a1 knows sae-a6-1 only from a6's advertisement, and a6 only from the flooding
    bed.wait_path(&["a1", "a2", "a3", "a6"], 16).await;
    let alice = bed.client("sae-a1-1");
    let keys = alice.enc_keys("sae-a6-1", &request(3)).await.unwrap();
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bed
        .client("sae-a6-1")
        .dec_keys("sae-a1-1", &ids)
        .await
        .unwrap();
    assert_eq!(
        keys.keys.iter().map(|k| &k.key).collect::<Vec<_>>(),
        fetched.keys.iter().map(|k| &k.key).collect::<Vec<_>>()
    );
}
