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

const LSDB_FILTER: &str = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><local-control/></key-manager></qkd_node>";

/// One advertisement as a node's NETCONF state shows it.
#[derive(Debug, Clone, PartialEq)]
struct Advertisement {
    origin: String,
    sequence: u64,
    originated_ms: i64,
    installed_ms: i64,
    /// (link, up)
    links: Vec<(String, bool)>,
}

/// A node's local controller as its NETCONF state shows it: the database and the next hop
/// toward each destination.
#[derive(Debug, Clone, Default)]
struct LocalControl {
    database: Vec<Advertisement>,
    routes: std::collections::BTreeMap<String, String>,
    policy: String,
}

impl LocalControl {
    fn digest(&self) -> Vec<(String, u64)> {
        self.database
            .iter()
            .map(|a| (a.origin.clone(), a.sequence))
            .collect()
    }

    fn advertisement(&self, origin: &str) -> &Advertisement {
        self.database.iter().find(|a| a.origin == origin).unwrap()
    }
}

fn millis(time: &str) -> i64 {
    let t = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{time}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn parse_local_control(xml: &str) -> LocalControl {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let child_text = |n: roxmltree::Node, name: &str| {
        n.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    let mut out = LocalControl::default();
    for n in doc.descendants() {
        if n.has_tag_name("local-control") {
            out.policy = child_text(n, "policy").unwrap_or_default();
        }
        if n.has_tag_name("advertisement") {
            out.database.push(Advertisement {
                origin: child_text(n, "origin").unwrap(),
                sequence: child_text(n, "sequence").unwrap().parse().unwrap(),
                originated_ms: millis(&child_text(n, "originated").unwrap()),
                installed_ms: millis(&child_text(n, "installed").unwrap()),
                links: n
                    .children()
                    .filter(|c| c.has_tag_name("link"))
                    .map(|l| {
                        (
                            child_text(l, "link-id").unwrap(),
                            child_text(l, "up").as_deref() == Some("true"),
                        )
                    })
                    .collect(),
            });
        }
        if n.has_tag_name("route") && n.parent().is_some_and(|p| p.has_tag_name("routes")) {
            out.routes.insert(
                child_text(n, "destination").unwrap(),
                child_text(n, "next-hop").unwrap(),
            );
        }
    }
    out.database.sort_by(|a, b| a.origin.cmp(&b.origin));
    out
}

async fn local_control(bed: &Bed, node: &str) -> LocalControl {
    let nc = bed.netconf(node).await;
    let xml = nc.get(Some(LSDB_FILTER)).await.unwrap();
    let _ = nc.close().await;
    parse_local_control(&xml)
}

/// Waits until every node of `nodes` holds the same database, of `nodes.len()` or more
/// advertisements satisfying `accept` at every node; returns each node's view.
async fn converged(
    bed: &Bed,
    nodes: &[&str],
    accept: impl Fn(&LocalControl) -> bool,
) -> Vec<LocalControl> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for node in nodes {
            views.push(local_control(bed, node).await);
        }
        let first = views[0].digest();
        if first.len() >= nodes.len() && views.iter().all(|v| v.digest() == first && accept(v)) {
            return views;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "databases did not converge: {:#?}",
            views.iter().map(LocalControl::digest).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_routed_around_by_every_other_node() {
    let bed = Bed::up(TOPOLOGY);
    let all = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let views = converged(&bed, &all, |_| true).await;
    assert!(views.iter().all(|v| v.policy == "fewest-hops"));
    // a1 reaches a3 through a2 (two hops), the only shortest way
    assert_eq!(views[0].routes["a3"], "a2");

    bed.cli(&["node", "stop", "a2", "--kill"]);
    // a2's neighbours lose its signal and advertise their links to it down; every live
    // node's database agrees and holds each of those advertisements within 1 s of its
    // origination (all processes share this machine's clock)
    let live = ["a1", "a3", "a4", "a5", "a6"];
    let to_a2 = |v: &LocalControl, node: &str, link: &str| {
        v.advertisement(node)
            .links
            .iter()
            .any(|(l, up)| l == link && !up)
    };
    let views = converged(&bed, &live, |v| {
        to_a2(v, "a1", "a1-a2") && to_a2(v, "a3", "a2-a3") && to_a2(v, "a5", "a2-a5")
    })
    .await;
    for view in &views {
        for (neighbour, link) in [("a1", "a1-a2"), ("a3", "a2-a3"), ("a5", "a2-a5")] {
            let adv = view.advertisement(neighbour);
            assert!(adv.links.iter().any(|(l, up)| l == link && !up));
            let delay = adv.installed_ms - adv.originated_ms;
            assert!(
                (0..1000).contains(&delay),
                "{neighbour}'s advertisement of {link} down took {delay} ms"
            );
        }
    }
    // every node routes around a2
    for view in &views {
        assert!(
            view.routes.values().all(|hop| hop != "a2"),
            "{:?}",
            view.routes
        );
    }
    assert_eq!(views[0].routes["a3"], "a4");
    bed.wait_path(&["a1", "a4", "a5", "a6", "a3"], 8).await;
    let keys = bed
        .client("sae-a1-1")
        .enc_keys("sae-a3-1", &request(2))
        .await
        .unwrap();
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    bed.client("sae-a3-1")
        .dec_keys("sae-a1-1", &ids)
        .await
        .unwrap();

    // a2 comes back with an empty memory: its new advertisement outranks the old one
    let old = views[0].advertisement("a2").sequence;
    bed.cli(&["node", "start", "a2"]);
    let views = converged(&bed, &all, |v| {
        // a2 anew, and every link up again at both its ends
        v.advertisement("a2").sequence > old
            && v.advertisement("a2").links.len() == 3
            && v.database.iter().all(|a| a.links.iter().all(|(_, up)| *up))
    })
    .await;
    assert_eq!(views[0].routes["a3"], "a2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_relayed_while_routes_change_are_neither_lost_nor_duplicated() {
    let bed = std::sync::Arc::new(Bed::up(TOPOLOGY));
    let all = ["a1", "a2", "a3", "a4", "a5", "a6"];
    converged(&bed, &all, |_| true).await;
    bed.wait_path(&["a1", "a2", "a3", "a6"], 32).await;
    bed.wait_path(&["a1", "a4", "a5", "a6"], 32).await;

    // an application asks for keys without pause while links go down and up under it
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let bed = bed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let alice = bed.client("sae-a1-1");
            let bob = bed.client("sae-a6-1");
            let (mut delivered, mut refused) = (Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match alice.enc_keys("sae-a6-1", &request(4)).await {
                    Ok(keys) => {
                        let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
                        let fetched = bob.dec_keys("sae-a1-1", &ids).await.unwrap();
                        assert_eq!(
                            keys.keys.iter().map(|k| &k.key).collect::<Vec<_>>(),
                            fetched.keys.iter().map(|k| &k.key).collect::<Vec<_>>(),
                            "the slave got other keys than the master"
                        );
                        delivered
                            .extend(keys.keys.iter().map(|k| (k.key_ID.clone(), k.key.clone())));
                    }
                    Err(qkdni::etsi014::ClientError::Kme { status: 503, .. }) => refused += 1,
                    Err(other) => panic!("{other}"),
                }
            }
            (delivered, refused)
        })
    };
    let mut rounds = 0;
    for link in ["a2-a3", "a1-a4", "a2-a5", "a5-a6", "a1-a2", "a3-a6"] {
        bed.cli(&["link", "down", link]);
        converged(&bed, &all, |v| {
            v.database
                .iter()
                .any(|a| a.links.iter().any(|(l, up)| l == link && !up))
        })
        .await;
        bed.cli(&["link", "up", link]);
        converged(&bed, &all, |v| {
            v.database
                .iter()
                .all(|a| a.links.iter().all(|(l, up)| l != link || *up))
        })
        .await;
        rounds += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (delivered, refused) = traffic.await.unwrap();
    assert_eq!(rounds, 6);
    assert!(
        delivered.len() >= 40,
        "{} keys, {refused} refusals",
        delivered.len()
    );
    let ids: std::collections::HashSet<&String> = delivered.iter().map(|(id, _)| id).collect();
    let keys: std::collections::HashSet<&String> = delivered.iter().map(|(_, k)| k).collect();
    assert_eq!(ids.len(), delivered.len(), "a key ID was handed out twice");
    assert_eq!(keys.len(), delivered.len(), "a key was handed out twice");
    // no KM failed under the changes
    for node in all {
        assert!(!bed.log(node).contains("panicked"), "{node} panicked");
    }
}
