//! Confidentiality of key material at rest (issue 14, part 7): after every key of a store is
//! consumed, none of the delivered keys can be found in the KMs' files, neither as they are
//! nor decrypted with the store key (`qkdni::km::store::forensics`: the attacker's view,
//! freed redb pages included). Real KMs, real mutual TLS, real stores.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;

use super::common::Bed;
use qkdni::etsi014::{Client, KeyContainer, KeyRequest};
use qkdni::km::store::{forensics, StoreKey, STORE_KEY_FILE};

/// Two KMs, one small link; a fetched key is erased at once (no refetch window).
const TOPOLOGY: &str = r#"
name = "at-rest"
[[domains]]
name = "R"
[[domains.nodes]]
name = "r1"
saes = ["sae-r1-1"]
[[domains.nodes]]
name = "r2"
saes = ["sae-r2-1"]
[[domains.links]]
id = "r1-r2"
nodes = ["r1", "r2"]
rate_bps = 1000000.0
capacity_blocks = 192
[km_limits]
refetch_window_seconds = 0
"#;

fn request(number: u32) -> KeyRequest {
    KeyRequest {
        number: Some(number),
        size: Some(256),
        ..Default::default()
    }
}

fn ids(keys: &KeyContainer) -> Vec<String> {
    keys.keys.iter().map(|k| k.key_ID.clone()).collect()
}

fn bytes(keys: &KeyContainer) -> Vec<Vec<u8>> {
    keys.keys
        .iter()
        .map(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(&k.key)
                .unwrap()
        })
        .collect()
}

fn data_dir(bed: &Bed, node: &str) -> PathBuf {
    let config = &bed.endpoints.node(node).unwrap().config;
    config.parent().unwrap().join("data")
}

/// The first of `files` holding one of `keys` as it is, and which key (one pass per file).
fn raw_in(files: &[PathBuf], keys: &[Vec<u8>]) -> Option<(PathBuf, usize)> {
    let mut by_prefix: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        by_prefix
            .entry(key[..8].try_into().unwrap())
            .or_default()
            .push(i);
    }
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        for at in 0..bytes.len().saturating_sub(7) {
            let Some(found) = by_prefix.get(&bytes[at..at + 8]) else {
                continue;
            };
            for &i in found {
                if bytes[at..].starts_with(&keys[i]) {
                    return Some((file.clone(), i));
                }
            }
        }
    }
    None
}

/// Usable blocks of the link at `node` and blocks pending there.
async fn pool(bed: &Bed, node: &str) -> (usize, usize) {
    let reports = qkdni::testbed::runner::link_reports(&bed.endpoints, node)
        .await
        .unwrap();
    let link = reports.iter().find(|l| l.id == "r1-r2").unwrap();
    (link.own_blocks, link.pending_blocks)
}

/// Takes keys as `master` (at `node`) for `slave_id`, each fetched by `slave`, until the
/// blocks left at `node` make no key (a key of one block takes one more to authenticate);
/// asking only for what is there, so no request waits for key that will not come.
#[allow(clippy::too_many_arguments)]
async fn drain(
    bed: &Bed,
    node: &str,
    master: &Client,
    slave_id: &str,
    slave: &Client,
    master_id: &str,
    delivered: &mut Vec<Vec<u8>>,
) {
    loop {
        let (own, _) = pool(bed, node).await;
        if own < 2 {
            return;
        }
        let keys = master
            .enc_keys(slave_id, &request((own - 1).min(16) as u32))
            .await
            .unwrap();
        let fetched = slave.dec_keys(master_id, &ids(&keys)).await.unwrap();
        assert_eq!(bytes(&fetched), bytes(&keys));
        delivered.extend(bytes(&keys));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_keys_cannot_be_recovered_from_the_store_files() {
    let bed = Bed::up_text(TOPOLOGY);
    bed.wait_path(&["r1", "r2"], 64).await;
    let (alice, bob) = (bed.client("sae-r1-1"), bed.client("sae-r2-1"));
    let (dir1, dir2) = (data_dir(&bed, "r1"), data_dir(&bed, "r2"));
    let key2 = StoreKey::load(&dir2.join(STORE_KEY_FILE)).unwrap();

    // keys waiting for bob are live in r2's store: sealed (not in its files as they are),
    // and the store key gives them up while they live (the tool does find keys)
    let waiting = alice.enc_keys("sae-r2-1", &request(4)).await.unwrap();
    let live = forensics::recover_dir(&dir2, &key2).unwrap();
    let files2 = forensics::files_under(&dir2).unwrap();
    assert_eq!(
        raw_in(&files2, &bytes(&waiting)),
        None,
        "live keys as they are"
    );
    for key in bytes(&waiting) {
        assert!(
            live.contains(&key),
            "a live key not recovered with the store key"
        );
    }
    let mut delivered = bytes(&waiting);
    let fetched = bob.dec_keys("sae-r1-1", &ids(&waiting)).await.unwrap();
    assert_eq!(bytes(&fetched), delivered);

    // no more key from the link; the blocks of both ends go to the applications until no
    // key can be made of what is left (a key takes more than one block)
    bed.cli(&["link", "down", "r1-r2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        drain(
            &bed,
            "r1",
            &alice,
            "sae-r2-1",
            &bob,
            "sae-r1-1",
            &mut delivered,
        )
        .await;
        drain(
            &bed,
            "r2",
            &bob,
            "sae-r1-1",
            &alice,
            "sae-r2-1",
            &mut delivered,
        )
        .await;
        let (r1, r2) = (pool(&bed, "r1").await, pool(&bed, "r2").await);
        if r1.0 < 2 && r2.0 < 2 && r1.1 + r2.1 == 0 {
            break;
        }
        // the transmitter's last (empty) frame confirms the receiver's pending blocks
        assert!(
            Instant::now() < deadline,
            "the pools never drained: {r1:?} {r2:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        delivered.len() > 64,
        "only {} keys delivered",
        delivered.len()
    );

    // while the agents run: what is left in the slots the last requests consumed from is
    // re-sealed within moments (the sweep), after which no delivered key opens any more
    let deadline = Instant::now() + Duration::from_secs(10);
    for dir in [&dir1, &dir2] {
        let store_key = StoreKey::load(&dir.join(STORE_KEY_FILE)).unwrap();
        loop {
            let found = forensics::recover_dir(dir, &store_key).unwrap();
            if !delivered.iter().any(|key| found.contains(key)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "consumed keys still open with the store key in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    bed.cli(&["node", "stop", "r1"]);
    bed.cli(&["node", "stop", "r2"]);
    for (node, dir) in [("r1", &dir1), ("r2", &dir2)] {
        let files = forensics::files_under(dir).unwrap();
        assert!(files.iter().any(|f| f.ends_with("keys.redb")));
        if let Some((file, _)) = raw_in(&files, &delivered) {
            panic!("a delivered key as it is in {}", file.display());
        }
        let store_key = StoreKey::load(&dir.join(STORE_KEY_FILE)).unwrap();
        let found = forensics::recover_dir(dir, &store_key).unwrap();
        for key in &delivered {
            assert!(
                !found.contains(key),
                "a delivered key decrypted from {node}'s files with the store key \
                 ({} data keys, {} records recovered)",
                found.data_keys,
                found.records
            );
        }
    }
}
